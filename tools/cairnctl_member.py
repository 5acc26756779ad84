"""``cairnctl member add | remove | list``: membership, with cairn's CURVE keys.

etcdctl's ``member add`` cannot say which CURVE key a new member will use on encrypted peer links;
``cairnctl member add NAME --peer-urls URL --curve-public-key KEY`` sends it in cairn's extension
field of MemberAddRequest (``curvePublicKey = 1000``), so every member admits the new one from the
raft entry that adds it (docs/security.md). It prints what etcdctl prints, plus the
``ETCD_PEER_CURVE_PUBLIC_KEYS`` the new member starts with.
"""

from __future__ import annotations

import argparse

import grpc

from actors.curve import check_key
from actors.proto import rpc_pb2, rpc_pb2_grpc


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    member = sub.add_parser("member", help="add, remove or list members (with their CURVE keys)")
    commands = member.add_subparsers(dest="member_command", required=True)
    add = commands.add_parser("add", help="add a member; start it afterwards with the printed settings")
    add.add_argument("name")
    add.add_argument("--peer-urls", required=True, help="the new member's peer URLs, comma-separated")
    add.add_argument("--learner", action="store_true", help="add it as a learner")
    add.add_argument(
        "--curve-public-key",
        default="",
        help="the new member's CURVE public key (Z85; python -m actors.raft.curve DIR)",
    )
    remove = commands.add_parser("remove", help="remove a member by its hex id")
    remove.add_argument("id")
    commands.add_parser("list", help="the members, with their CURVE public keys")


def run(args: argparse.Namespace, channel: grpc.Channel) -> int:
    cluster = rpc_pb2_grpc.ClusterStub(channel)
    if args.member_command == "add":
        return add(cluster, args)
    if args.member_command == "remove":
        resp = cluster.MemberRemove(rpc_pb2.MemberRemoveRequest(ID=int(args.id, 16)), timeout=args.timeout)
        print(f"Member {int(args.id, 16):x} removed from cluster {resp.header.cluster_id:x}")
        return 0
    resp = cluster.MemberList(rpc_pb2.MemberListRequest(), timeout=args.timeout)
    for m in resp.members:
        state = "started" if m.name else "unstarted"
        print(
            f"{m.ID:x}, {state}, {m.name}, {','.join(m.peerURLs)}, {','.join(m.clientURLs)}, "
            f"{str(m.isLearner).lower()}, {m.curvePublicKey or '-'}"
        )
    return 0


def add(cluster: rpc_pb2_grpc.ClusterStub, args: argparse.Namespace) -> int:
    urls = [u.strip() for u in args.peer_urls.split(",") if u.strip()]
    request = rpc_pb2.MemberAddRequest(peerURLs=urls, isLearner=args.learner)
    if args.curve_public_key:
        request.curvePublicKey = check_key(args.curve_public_key, "--curve-public-key").decode()
    resp = cluster.MemberAdd(request, timeout=args.timeout)
    print(f"Member {resp.member.ID:x} added to cluster {resp.header.cluster_id:x}\n")
    initial, keys = [], []
    for m in resp.members:
        name = args.name if m.ID == resp.member.ID else m.name
        initial += [f"{name}={u}" for u in m.peerURLs if name]
        if name and m.curvePublicKey:
            keys.append(f"{name}={m.curvePublicKey}")
    print(f'ETCD_NAME="{args.name}"')
    print(f'ETCD_INITIAL_CLUSTER="{",".join(initial)}"')
    print(f'ETCD_INITIAL_ADVERTISE_PEER_URLS="{",".join(urls)}"')
    print('ETCD_INITIAL_CLUSTER_STATE="existing"')
    if keys:
        print(f"ETCD_PEER_CURVE_PUBLIC_KEYS='{','.join(keys)}'")  # single quotes: Z85 keys may hold a $
    return 0
