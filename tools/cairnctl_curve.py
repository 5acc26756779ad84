"""``cairnctl curve keygen | server-key | peer-key``: the CURVE keys an operator hands around.

A native-protocol client needs the node's client-port public key (``server-key DATA_DIR``, made
by the node at its first start with ``plugins.zmq.curve``) and a key pair of its own
(``keygen FILE``: the secret in FILE, mode 0600, the public key printed and in ``FILE.pub``, for
the node's ``curve-client-keys``). ``peer-key DATA_DIR`` makes or reads a member's peer-link pair
and prints the public key that ``peer-curve-public-keys`` and ``member add --curve-public-key`` take.
"""

from __future__ import annotations

import argparse
import os

import zmq

from actors import curve
from actors.raft.curve import key_pair
from plugins.zmq.curve import server_key_path


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("curve", help="CURVE keys: make a client pair, show a node's public keys")
    commands = parser.add_subparsers(dest="curve_command", required=True)
    keygen = commands.add_parser("keygen", help="make a key pair: secret in FILE (0600), public in FILE.pub")
    keygen.add_argument("file")
    server = commands.add_parser("server-key", help="the public key of a node's native ZeroMQ port")
    server.add_argument("data_dir")
    peer = commands.add_parser("peer-key", help="a member's peer-link public key (made when missing)")
    peer.add_argument("data_dir")


def run(args: argparse.Namespace) -> int:
    if args.curve_command == "keygen":
        if os.path.exists(args.file):
            raise ValueError(f"{args.file} exists: not overwriting a key")
        public, secret = zmq.curve_keypair()
        curve.write_secret(args.file, secret)
        curve.write_public(args.file + ".pub", public)
        print(public.decode())
    elif args.curve_command == "server-key":
        path = server_key_path(args.data_dir)
        if not os.path.exists(path):
            raise ValueError(f"no {path}: the node makes it when it starts with plugins.zmq.curve on")
        with open(path, encoding="ascii") as f:
            print(curve.check_key(f.read(), path).decode())
    else:
        print(key_pair(args.data_dir)[0].decode())
    return 0
