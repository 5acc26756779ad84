"""CURVE on the peer links: encryption and mutual authentication between members (off by default).

Each member has a CURVE key pair in ``<data-dir>/curve/`` (``peer.pub``, ``peer.secret``), made
on first use; ``python -m actors.raft.curve DATA_DIR`` makes it ahead of the first start and prints
the public key. With ``peer-curve-public-keys: n1=KEY,n2=KEY,...`` (the founding members) every
member's ROUTER is a CURVE server that a ZAP handler guards: a client whose public key belongs to
no current member is refused during the handshake, before any raft message. Each outbound DEALER
authenticates the peer it dials by that peer's key (what a TLS client does with the server's
certificate). A member added at runtime brings its key in the replicated member table
(``Member.curvePublicKey``, set by ``cairnctl member add --curve-public-key``), so every member
admits it from the entry that adds it and refuses it again from the entry that removes it.
The key files, socket options and the ZAP handler itself are shared with the client frontend
(:mod:`actors.curve`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from actors import curve

ZAP_DOMAIN = b"cairn-peers"


@dataclass(frozen=True, slots=True)
class CurveSettings:
    public: bytes
    secret: bytes
    peers: Mapping[int, bytes]  # founding member id -> its public key (Z85), from the configuration


def key_pair(data_dir: str) -> tuple[bytes, bytes]:
    """``(public, secret)`` of this member, Z85, created in the data dir when missing."""
    return curve.key_pair(os.path.join(data_dir, "curve"), "peer")


def parse_public_keys(value: str) -> dict[str, bytes]:
    """``name=KEY,...`` as name -> Z85 key; raises ValueError naming a bad entry."""
    keys: dict[str, bytes] = {}
    for item in filter(None, (p.strip() for p in value.split(","))):
        name, sep, key = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError(item)
            keys[name] = curve.check_key(key, "peer-curve-public-keys")
        except ValueError:
            text = f"peer-curve-public-keys entry {item!r} is not name=<40-character Z85 key>"
            raise ValueError(text) from None
    return keys


def main() -> None:
    """``python -m actors.raft.curve DATA_DIR``: make (or read) the member's pair, print its key."""
    if len(sys.argv) != 2:
        sys.exit("usage: python -m actors.raft.curve DATA_DIR")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: the key only
    print(key_pair(sys.argv[1])[0].decode())


if __name__ == "__main__":
    main()
