"""CURVE on the native ZeroMQ client port: encryption, and only clients whose public key is allowed.

Settings (``plugins: {zmq: {...}}``), named like the peer links' (``peer-curve-public-keys``):

- ``curve: true`` turns it on (off by default);
- ``curve-secret-key-file``: the server's secret key (Z85, one line); default
  ``<data-dir>/curve/zmq.secret``, made on the first start. Either way the server's public key is
  written to ``<data-dir>/curve/zmq.pub`` (``cairnctl curve server-key DATA_DIR`` prints it) and
  logged as ``zmq_curve_serving``: clients need it to connect;
- ``curve-client-keys``: allowed client public keys (a list, or one comma-separated string);
- ``curve-client-keys-file``: a file of allowed client public keys, one a line (``#`` comments),
  read again whenever it changes, so clients are allowed and revoked without a restart (a revoked
  key keeps a connection already made until it drops; new handshakes are refused).

A ZAP handler (:class:`actors.curve.ZapHandler`) answers libzmq's handshake checks on the
frontend's asyncio loop; a refused client is logged as ``zmq_client_refused`` with its key.
The ZAP reply names the client's key as its user id, which libzmq attaches to every message of
that connection: the server uses it so that one key cannot take over another key's routing id
(and with it the other client's watch streams).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import structlog
import zmq

from actors import curve
from node.config import ConfigError

log = structlog.get_logger()

ZAP_DOMAIN = b"cairn-clients"
SERVER_KEY_STEM = "zmq"  # <data-dir>/curve/zmq.secret and zmq.pub


@dataclass(frozen=True, slots=True)
class ClientCurve:
    public: bytes
    secret: bytes
    allowed: frozenset[bytes]  # from curve-client-keys
    keys_file: str | None  # curve-client-keys-file, re-read when it changes


def server_key_path(data_dir: str) -> str:
    """Where an operator finds the client port's public key."""
    return os.path.join(data_dir, "curve", SERVER_KEY_STEM + ".pub")


def client_curve(settings: dict, data_dir: str) -> ClientCurve | None:
    """The CURVE settings of the zmq plugin, checked (ConfigError names the bad one); None when off."""
    enabled = settings.get("curve", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"plugins.zmq.curve: {enabled!r} is not true or false")
    if not enabled:
        return None
    secret_file = settings.get("curve-secret-key-file")
    try:
        if secret_file is None:
            public, secret = curve.key_pair(os.path.join(data_dir, "curve"), SERVER_KEY_STEM)
        else:
            public, secret = curve.read_secret(str(secret_file))
            os.makedirs(os.path.dirname(server_key_path(data_dir)), mode=0o700, exist_ok=True)
            curve.write_public(server_key_path(data_dir), public)
    except (OSError, ValueError) as e:
        raise ConfigError(f"plugins.zmq.curve-secret-key-file: {e}") from None
    listed = settings.get("curve-client-keys", [])
    if isinstance(listed, str):
        listed = [k for k in listed.split(",") if k.strip()]
    if not isinstance(listed, list):
        raise ConfigError("plugins.zmq.curve-client-keys: want a list of Z85 public keys")
    try:
        allowed = frozenset(curve.check_key(k, "plugins.zmq.curve-client-keys") for k in listed)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    keys_file = settings.get("curve-client-keys-file")
    if keys_file is not None:
        keys_file = str(keys_file)
        try:
            read_keys_file(keys_file)
        except (OSError, ValueError) as e:
            raise ConfigError(f"plugins.zmq.curve-client-keys-file: {e}") from None
    elif not allowed:
        raise ConfigError("plugins.zmq.curve needs curve-client-keys or curve-client-keys-file")
    return ClientCurve(public, secret, allowed, keys_file)


def read_keys_file(path: str) -> set[bytes]:
    with open(path, encoding="utf-8") as f:
        return curve.read_public_keys(f, path)


class ClientGate:
    """The ZAP handler of the client port, run on the frontend's event loop."""

    def __init__(self, ctx: zmq.Context, settings: ClientCurve) -> None:
        self.settings = settings
        self.mtime: float | None = None
        self.zap = curve.ZapHandler(ctx, ZAP_DOMAIN, set(settings.allowed), "zmq_client_refused")
        self.loop: asyncio.AbstractEventLoop | None = None

    def secure(self, sock: zmq.Socket) -> None:
        curve.secure_server(sock, ZAP_DOMAIN, self.settings.public, self.settings.secret)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._reload()
        loop.add_reader(self.zap.socket.getsockopt(zmq.FD), self._answer)
        loop.call_soon(self._answer)  # the FD is edge-triggered
        log.info("zmq_curve_serving", public_key=self.settings.public.decode(), allowed=len(self.zap.allowed))

    def _reload(self) -> None:
        """Re-read the keys file if it changed; a file that became unreadable keeps the last keys."""
        path = self.settings.keys_file
        if path is None:
            return
        try:
            mtime = os.stat(path).st_mtime_ns
            if mtime == self.mtime:
                return
            keys = read_keys_file(path)
        except (OSError, ValueError) as e:
            log.error("zmq_client_keys_file_unreadable", path=path, error=str(e))
            return
        self.mtime = mtime
        self.zap.allowed = set(self.settings.allowed) | keys
        log.info("zmq_client_keys_loaded", path=path, allowed=len(self.zap.allowed))

    def _answer(self) -> None:
        sock = self.zap.socket
        while not sock.closed and sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            requests = []
            while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                requests.append(sock.recv_multipart(zmq.NOBLOCK))
            self._reload()
            self.zap.answer(requests)  # sending may take the FD's edge: hence the outer loop

    def close(self) -> None:
        if self.loop is not None:
            self.loop.remove_reader(self.zap.socket.getsockopt(zmq.FD))
        self.zap.close()
