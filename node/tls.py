"""TLS for the client listeners, from etcd's keys: one place that turns the config into the
server-side contexts every frontend uses (asyncio ``ssl`` for gRPC, REST and RESP).

TLS is per listen URL, as in etcd: ``https://`` URLs get it, ``http://`` ones stay plain. With
``client-cert-auth`` a client must present a certificate signed by ``trusted-ca-file``; its
Common Name then stands for the user when the request carries no token (etcd's AuthInfoFromTLS),
resolved in the core by the auth backends (``actors/auth/backends.py``).
"""

from __future__ import annotations

import os
import ssl
from typing import Any

import structlog

from node.certs import self_signed_pair
from node.config import ConfigError, NodeConfig

log = structlog.get_logger()

# etcd 3.4's minimum (transport.TLSInfo): TLS 1.2
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
HANDSHAKE_TIMEOUT = 10.0  # seconds an asyncio listener gives a client to finish its handshake


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{key} {path!r}: {e.strerror}") from None


def certificate_files(config: NodeConfig) -> tuple[str, str]:
    """(cert file, key file): the configured pair, or auto-tls's self-signed one."""
    if config.cert_file and config.key_file:
        return config.cert_file, config.key_file
    # etcd: auto-tls writes a self-signed pair to <data-dir>/fixtures/client, reused across restarts
    hosts = sorted({host for host, _ in config.client_addresses()})
    return self_signed_pair(os.path.join(config.data_dir, "fixtures", "client"), hosts)


class RefusalLoggingSSLObject(ssl.SSLObject):
    """Logs refused handshakes, which asyncio and uvloop drop silently (a certificate from
    another CA, none under client-cert-auth, plain text to a TLS port); both event loops build
    their server-side TLS with the context's ``sslobject_class``."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as e:
            log.warning("tls_handshake_refused", reason=e.reason or str(e), error=str(e))
            raise


def server_context(config: NodeConfig) -> ssl.SSLContext:
    """The asyncio server context of REST and RESP listeners on ``https://`` URLs."""
    cert, key = certificate_files(config)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    try:
        context.load_cert_chain(cert, key)
        if config.trusted_ca_file:
            context.load_verify_locations(cafile=config.trusted_ca_file)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cert-file/key-file/trusted-ca-file: cannot load: {e}") from None
    context.verify_mode = ssl.CERT_REQUIRED if config.client_cert_auth else ssl.CERT_NONE
    context.sslobject_class = RefusalLoggingSSLObject
    # gRPC clients offer only h2 (C-core insists on getting it); curl offers both and must get
    # http/1.1, as the shared port takes every HTTP/2 connection for gRPC: the server's order wins
    context.set_alpn_protocols(["http/1.1", "h2"])
    return context


def common_name(peercert: dict[str, Any] | None) -> str | None:
    """The subject CN of a verified peer certificate (``SSLObject.getpeercert()``), if any."""
    for rdn in (peercert or {}).get("subject", ()):
        for attribute, value in rdn:
            if attribute == "commonName":
                return str(value)
    return None


def is_tls_url(url: str) -> bool:
    return url.startswith("https://")
