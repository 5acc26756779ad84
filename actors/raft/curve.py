"""CURVE on the peer links: encryption and mutual authentication between members (off by default).

Each member has a CURVE key pair in ``<data-dir>/curve/`` (``peer.pub``, ``peer.secret``), made
on first use; ``python -m actors.raft.curve DATA_DIR`` makes it ahead of the first start and prints
the public key, which is what the other members' configuration lists. With
``peer-curve-public-keys: n1=KEY,n2=KEY,...`` every member's ROUTER is a CURVE server that a ZAP
handler guards: a client whose public key is not in the list is refused during the handshake,
before any raft message. Each outbound DEALER authenticates the peer it dials by that peer's key
from the same list (what a TLS client does with the server's certificate).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
import zmq
from zmq.utils import z85

log = structlog.get_logger()

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by the ZAP specification (RFC 27)
ZAP_DOMAIN = b"cairn-peers"
KEY_LENGTH = 40  # a Z85-encoded 32-byte key


@dataclass(frozen=True, slots=True)
class CurveSettings:
    public: bytes
    secret: bytes
    peers: Mapping[int, bytes]  # member id -> its public key (Z85): who may connect, whom we dial


def key_pair(data_dir: str) -> tuple[bytes, bytes]:
    """``(public, secret)`` of this member, Z85, created in the data dir when missing."""
    directory = os.path.join(data_dir, "curve")
    public_path, secret_path = os.path.join(directory, "peer.pub"), os.path.join(directory, "peer.secret")
    if os.path.exists(public_path) and os.path.exists(secret_path):
        with open(public_path, "rb") as f, open(secret_path, "rb") as g:
            return f.read().strip(), g.read().strip()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    public, secret = zmq.curve_keypair()
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret + b"\n")
    with open(public_path, "wb") as f:
        f.write(public + b"\n")
    log.info("curve_key_pair_created", public_key=public.decode(), path=public_path)
    return public, secret


def parse_public_keys(value: str) -> dict[str, bytes]:
    """``name=KEY,...`` as name -> Z85 key; raises ValueError naming a bad entry."""
    keys: dict[str, bytes] = {}
    for item in filter(None, (p.strip() for p in value.split(","))):
        name, sep, key = item.partition("=")
        if not sep or not name or len(key) != KEY_LENGTH:
            raise ValueError(f"peer-curve-public-keys entry {item!r} is not name=<40-character Z85 key>")
        try:
            z85.decode(key)
        except (ValueError, KeyError, IndexError):
            raise ValueError(f"peer-curve-public-keys: the key of {name!r} is not Z85") from None
        keys[name] = key.encode()
    return keys


class ZapHandler:
    """Answers libzmq's authentication requests for the peer ROUTER: CURVE clients whose public
    key is listed pass, everyone else is refused (and logged). Polled by the raft actor's loop."""

    def __init__(self, ctx: zmq.Context, allowed: set[bytes]) -> None:
        self.allowed = allowed
        self.socket = ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(ZAP_ENDPOINT)

    def answer(self, messages: list[list[bytes]]) -> None:
        for parts in messages:
            # [REQ envelope..., b"", version, request id, domain, address, identity, mechanism, creds...]
            split = parts.index(b"") + 1
            envelope, request = parts[:split], parts[split:]
            if len(request) < 6:
                continue
            version, request_id, domain, address, _, mechanism, *credentials = request
            key = z85.encode(credentials[0]) if mechanism == b"CURVE" and credentials else b""
            ok = domain == ZAP_DOMAIN and key in self.allowed
            if not ok:
                log.warning(
                    "peer_refused", address=address.decode(errors="replace"),
                    mechanism=mechanism.decode(errors="replace"), public_key=key.decode() or None,
                )  # fmt: skip
            status = (b"200", b"OK") if ok else (b"400", b"unknown peer key")
            self.socket.send_multipart([*envelope, version, request_id, *status, key, b""])

    def close(self) -> None:
        self.socket.close(linger=0)


def secure_server(sock: zmq.Socket, curve: CurveSettings) -> None:
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)


def secure_client(sock: zmq.Socket, curve: CurveSettings, server_key: bytes) -> None:
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)


def main() -> None:
    """``python -m actors.raft.curve DATA_DIR``: make (or read) the member's pair, print its key."""
    if len(sys.argv) != 2:
        sys.exit("usage: python -m actors.raft.curve DATA_DIR")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: the key only
    print(key_pair(sys.argv[1])[0].decode())


if __name__ == "__main__":
    main()
