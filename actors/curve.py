"""ZeroMQ CURVE pieces shared by the peer links (actors/raft/curve.py) and the native client
frontend (plugins/zmq/curve.py): key files, key checks, socket options and a ZAP handler.

CURVE gives a ZeroMQ connection encryption and authenticates both ends by their public keys;
the server learns the client's key during the handshake and asks the ZAP handler bound in its
context (RFC 27) whether to let it in. Keys travel and are stored as Z85 text (40 characters).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import structlog
import zmq
from zmq.utils import z85

log = structlog.get_logger()

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by the ZAP specification (RFC 27)
KEY_LENGTH = 40  # a Z85-encoded 32-byte key


def check_key(key: str | bytes, what: str) -> bytes:
    """``key`` as Z85 bytes; ValueError naming ``what`` if it is not a 40-character Z85 key."""
    raw = key.encode() if isinstance(key, str) else bytes(key)
    raw = raw.strip()
    if len(raw) != KEY_LENGTH:
        shown = raw[:60].decode(errors="replace")
        raise ValueError(f"{what}: {shown!r} is not a 40-character Z85 CURVE key")
    try:
        z85.decode(raw)
    except (ValueError, KeyError, IndexError):
        raise ValueError(f"{what}: {raw.decode(errors='replace')!r} is not Z85") from None
    return raw


def public_of(secret: bytes) -> bytes:
    """The public key that belongs to a Z85 secret key."""
    return zmq.curve_public(secret)


def write_secret(path: str, secret: bytes) -> None:
    """A secret key file, mode 0600 from its first byte (never readable by others)."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret + b"\n")


def write_public(path: str, public: bytes) -> None:
    with open(path, "wb") as f:
        f.write(public + b"\n")


def read_secret(path: str) -> tuple[bytes, bytes]:
    """``(public, secret)`` from a secret key file; OSError or ValueError naming the file."""
    with open(path, "rb") as f:
        secret = check_key(f.read(), path)
    return public_of(secret), secret


def key_pair(directory: str, stem: str) -> tuple[bytes, bytes]:
    """``(public, secret)`` kept as ``STEM.pub`` and ``STEM.secret`` in ``directory``, made when missing."""
    public_path = os.path.join(directory, stem + ".pub")
    secret_path = os.path.join(directory, stem + ".secret")
    if os.path.exists(public_path) and os.path.exists(secret_path):
        with open(public_path, "rb") as f, open(secret_path, "rb") as g:
            return f.read().strip(), g.read().strip()
    public, secret = zmq.curve_keypair()
    write_secret(secret_path, secret)
    write_public(public_path, public)
    log.info("curve_key_pair_created", public_key=public.decode(), path=public_path)
    return public, secret


def read_public_keys(lines: Iterable[str], what: str) -> set[bytes]:
    """Keys one a line, each its line's first word (the rest: a comment, say whose key it is);
    blank lines and lines of a ``#`` not starting a key are skipped (Z85 itself uses ``#``, so a
    comment is ``# ...``). ValueError naming the line."""
    keys = set()
    for number, line in enumerate(lines, 1):
        words = line.split()
        if not words or (words[0].startswith("#") and len(words[0]) != KEY_LENGTH):
            continue
        keys.add(check_key(words[0], f"{what} line {number}"))
    return keys


def secure_server(sock: zmq.Socket, domain: bytes, public: bytes, secret: bytes) -> None:
    """Make ``sock`` a CURVE server whose clients the ZAP handler of ``domain`` admits."""
    sock.setsockopt(zmq.ZAP_DOMAIN, domain)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)


def client_options(server_key: bytes, public: bytes, secret: bytes) -> dict[int, bytes]:
    """The socket options of a CURVE client that talks only to the holder of ``server_key``'s secret."""
    return {zmq.CURVE_SERVERKEY: server_key, zmq.CURVE_PUBLICKEY: public, zmq.CURVE_SECRETKEY: secret}


def secure_client(sock: zmq.Socket, server_key: bytes, public: bytes, secret: bytes) -> None:
    for option, value in client_options(server_key, public, secret).items():
        sock.setsockopt(option, value)


class ZapHandler:
    """Answers libzmq's authentication requests for the CURVE servers of one context: a client
    whose public key is in ``allowed`` passes, everyone else is refused and logged as
    ``refused_event``. Its socket is polled by its owner's loop, which calls :meth:`answer`."""

    def __init__(self, ctx: zmq.Context, domain: bytes, allowed: set[bytes], refused_event: str) -> None:
        self.domain = domain
        self.allowed = allowed  # owners may replace it as the set of admitted keys changes
        self.refused_event = refused_event
        self.socket = ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(ZAP_ENDPOINT)

    def answer(self, messages: list[list[bytes]]) -> None:
        for parts in messages:
            # [REQ envelope..., b"", version, request id, domain, address, identity, mechanism, creds...]
            if b"" not in parts:
                continue
            split = parts.index(b"") + 1
            envelope, request = parts[:split], parts[split:]
            if len(request) < 6:
                continue
            version, request_id, domain, address, _, mechanism, *credentials = request
            key = z85.encode(credentials[0]) if mechanism == b"CURVE" and credentials else b""
            ok = domain == self.domain and key in self.allowed
            if not ok:
                log.warning(
                    self.refused_event, address=address.decode(errors="replace"),
                    mechanism=mechanism.decode(errors="replace"), public_key=key.decode() or None,
                )  # fmt: skip
            status = (b"200", b"OK") if ok else (b"400", b"unknown public key")
            self.socket.send_multipart([*envelope, version, request_id, *status, key, b""])

    def close(self) -> None:
        self.socket.close(linger=0)
