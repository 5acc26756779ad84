"""Who this member is in which cluster: decided once, when its data dir is new, then read back.

etcd keeps the member and cluster ids in its WAL metadata; cairn keeps them in
``data-dir/member/identity.json`` with the raft bootstrap configuration:

* ``initial-cluster-state new``: the ids derive from ``initial-cluster`` (every founding member
  computes the same), the founders are the bootstrap voters and the seed of the member table.
* ``initial-cluster-state existing`` (a member added with ``etcdctl member add`` starting for the
  first time): it asks the members listed in ``initial-cluster`` for the cluster id and the member
  table over the peer link (:data:`JOIN_MAGIC`), finds itself by its peer URLs, and starts with an
  empty raft configuration: it learns the real one from the leader's log or snapshot. On CURVE
  peer links it asks with its own key pair, which the members admit once ``member add
  --curve-public-key`` put it in their table, and checks each member's key from the configuration.

Once the file exists, the ``initial-*`` settings are ignored (as etcd ignores them on a data dir
that already holds a member).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson
import structlog
import zmq

from actors.curve import secure_client
from actors.proto import rpc_pb2
from actors.raft.transport import JOIN_MAGIC, zmq_url

log = structlog.get_logger()

FILE = "identity.json"


class JoinError(RuntimeError):
    """A joining member could not learn the cluster it was added to."""


@dataclass(slots=True, frozen=True)
class Identity:
    member_id: int
    cluster_id: int
    bootstrap_voters: tuple[int, ...]  # the raft configuration before index 1 (empty for a joiner)
    seed: tuple[rpc_pb2.Member, ...] = ()  # the member table of a store that has none yet (kept in
    # the file too: a crash between writing it and seeding the store must not lose the table)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "member_id": f"{self.member_id:x}",
                "cluster_id": f"{self.cluster_id:x}",
                "bootstrap_voters": [f"{v:x}" for v in self.bootstrap_voters],
                "seed": [m.SerializeToString().hex() for m in self.seed],
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> Identity:
        d = orjson.loads(data)
        voters = tuple(int(v, 16) for v in d["bootstrap_voters"])
        seed = tuple(rpc_pb2.Member.FromString(bytes.fromhex(m)) for m in d.get("seed", ()))
        return cls(int(d["member_id"], 16), int(d["cluster_id"], 16), voters, seed)


def load(data_dir: str) -> Identity | None:
    try:
        with open(os.path.join(data_dir, "member", FILE), "rb") as f:
            return Identity.from_json(f.read())
    except FileNotFoundError:
        return None


def save(data_dir: str, identity: Identity) -> None:
    """Write the file atomically (a crash leaves the old one or the new one)."""
    path = os.path.join(data_dir, "member")
    os.makedirs(path, exist_ok=True)
    tmp = os.path.join(path, FILE + ".tmp")
    with open(tmp, "wb") as f:
        f.write(identity.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(path, FILE))


def founding(member_id: int, cluster_id: int, members: Sequence[rpc_pb2.Member]) -> Identity:
    """A founding member of a new cluster: every founder is a voter and in the seed table."""
    return Identity(member_id, cluster_id, tuple(sorted(m.ID for m in members)), tuple(members))


def join(
    ctx: zmq.Context,
    own_peer_urls: Sequence[str],
    peer_urls: Sequence[str],
    timeout: float = 30.0,
    curve: tuple[bytes, bytes] | None = None,
    server_keys: Mapping[str, bytes] | None = None,
) -> Identity:
    """Ask the existing members (their peer URLs) for the cluster; retried until ``timeout``.
    With ``curve`` (this member's public and secret key) it asks over CURVE, each URL by its
    member's key in ``server_keys``."""
    deadline = time.monotonic() + timeout
    last = "no member answered"
    keys = server_keys or {}
    if curve is not None:
        peer_urls = [url for url in peer_urls if url in keys]  # a member we cannot authenticate: not asked
        last += " (on CURVE: was this member added with its --curve-public-key?)"
    while time.monotonic() < deadline:
        for url in peer_urls:
            answer = _ask(ctx, url, None if curve is None else (keys[url], *curve))
            if answer is None:
                continue
            me = next((m for m in answer.members if sorted(m.peerURLs) == sorted(own_peer_urls)), None)
            if me is None:
                last = f"the cluster has no member with peer URLs {list(own_peer_urls)} (add it first)"
                continue
            log.info("member_joining", member_id=f"{me.ID:x}", cluster_id=f"{answer.header.cluster_id:x}")
            return Identity(me.ID, answer.header.cluster_id, (), tuple(answer.members))
        time.sleep(0.5)
    raise JoinError(f"could not join the cluster at {list(peer_urls)}: {last}")


def _ask(
    ctx: zmq.Context, url: str, curve: tuple[bytes, bytes, bytes] | None
) -> rpc_pb2.MemberListResponse | None:
    """One member's answer, or None; ``curve``: (its public key, ours, our secret)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        secure_client(sock, *curve)
    try:
        sock.connect(zmq_url(url))
        sock.send(JOIN_MAGIC)
        if not sock.poll(1000):
            return None
        frame = sock.recv()
        if not frame.startswith(JOIN_MAGIC):
            return None
        return rpc_pb2.MemberListResponse.FromString(frame[len(JOIN_MAGIC) :])
    except Exception as e:  # a garbled answer: try the next member
        log.warning("join_answer_unusable", url=url, error=str(e))
        return None
    finally:
        sock.close(linger=0)
