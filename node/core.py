"""The core process: every actor of a node in one thread, driven by one Poller loop.

Started by the supervisor as ``python -m node.core`` with the node's config in ``CAIRN_CONFIG``.
"""

from __future__ import annotations

import os
import signal
import sys

import structlog
import zmq

from actors.auth.actor import AuthActor, AuthSettings
from actors.auth.backends import BackendChain
from actors.auth.gate import AuthGate
from actors.auth.tokens import token_provider
from actors.lease.actor import LeaseActor, LeaseSettings
from actors.loop import Loop
from actors.proto import rpc_pb2
from actors.raft import identity
from actors.raft.actor import RaftActor, RaftSettings
from actors.raft.curve import CurveSettings, key_pair, parse_public_keys
from actors.raft.identity import Identity
from actors.session import Limits, SessionActor, key_prefix
from actors.storage.actor import StorageActor, StorageSettings
from actors.storage.backend import META
from actors.storage.install import INSTALLED_SNAPSHOT
from actors.watch.actor import WatchActor
from node.config import ConfigError, NodeConfig, split_urls
from node.logging import setup_logging
from node.plugins import auth_backends
from node.supervisor import EXIT_FATAL

log = structlog.get_logger()


def identity_of(config: NodeConfig, ctx: zmq.Context) -> tuple[Identity, bool]:
    """This member's ids: read back, or decided now (True) for a new data dir (founding or joining)."""
    found = identity.load(config.data_dir)
    if found is not None:
        return found, False
    peers = config.cluster_peers()
    keys = parse_public_keys(config.peer_curve_public_keys)  # CURVE on the peer links (curve_settings)
    if config.initial_cluster_state == "existing":
        others = [url for name, urls in peers.items() if name != config.name for url in urls]
        curve = key_pair(config.data_dir) if keys else None
        server_keys = {url: keys[name] for name, urls in peers.items() if name in keys for url in urls}
        own_urls = split_urls(config.initial_advertise_peer_urls)
        decided = identity.join(ctx, own_urls, others, curve=curve, server_keys=server_keys)
    else:
        ids = config.member_ids()
        founders = [
            rpc_pb2.Member(
                ID=ids[name], name=name, peerURLs=urls, curvePublicKey=keys.get(name, b"").decode()
            )
            for name, urls in peers.items()
        ]
        decided = identity.founding(config.member_id, config.cluster_id, founders)
    identity.save(config.data_dir, decided)
    return decided, True


def curve_settings(config: NodeConfig) -> CurveSettings | None:
    """CURVE for the peer links when ``peer-curve-public-keys`` is set (actors/raft/curve.py)."""
    keys = parse_public_keys(config.peer_curve_public_keys)
    if not keys:
        return None
    public, secret = key_pair(config.data_dir)
    listed = keys.get(config.name)
    if listed is not None and listed != public:
        raise ConfigError(
            f"peer-curve-public-keys lists {listed.decode()} for this member ({config.name}), "
            f"but its key in {config.data_dir}/curve is {public.decode()}"
        )
    ids = config.member_ids()  # the founding members' ids (members added later: keys in the table)
    return CurveSettings(public, secret, {ids[name]: key for name, key in keys.items() if name in ids})


def build(config: NodeConfig, ctx: zmq.Context) -> Loop:
    """Wire the actors of one member; storage opens first so raft knows what is already applied."""
    me, fresh = identity_of(config, ctx)
    prefix = key_prefix(me.member_id)
    tokens = token_provider(config.auth_token, config.auth_token_ttl)
    storage = StorageActor(
        ctx,
        StorageSettings(
            me.member_id,
            me.cluster_id,
            config.data_dir,
            prefix,
            heartbeat_ms=config.heartbeat_interval,
            election_ms=config.election_timeout,
            initial_members=me.seed,
            replace_members=fresh,
        ),
        tokens,
    )
    if me.member_id in storage.members.removed:
        storage.close()
        raise RuntimeError(f"member {me.member_id:x} was removed from the cluster: it cannot start again")
    limits = Limits(
        config.max_request_bytes, config.max_txn_ops, quota_backend_bytes=config.quota_backend_bytes
    )
    lease = LeaseActor(
        ctx,
        LeaseSettings(
            me.member_id,
            prefix,
            election_ms=config.election_timeout,
            request_timeout=limits.request_timeout,
        ),
    )
    raft = RaftActor(
        ctx,
        RaftSettings(
            member_id=me.member_id,
            cluster_id=me.cluster_id,
            members=storage.members,
            bootstrap_voters=me.bootstrap_voters,
            name=config.name,
            client_urls=tuple(split_urls(config.advertise_client_urls)),
            listen_peer_urls=tuple(split_urls(config.listen_peer_urls)),
            data_dir=config.data_dir,
            heartbeat_ms=config.heartbeat_interval,
            election_ms=config.election_timeout,
            applied=storage.applied_index,
            keep_entries=config.snapshot_count,
            installed_snapshot=storage.backend.get(META, INSTALLED_SNAPSHOT) or b"",
            curve=curve_settings(config),
        ),
    )
    backends = BackendChain(auth_backends(config))
    gate = AuthGate(
        storage.auth, me.cluster_id, me.member_id, backends, certificate_users=config.client_cert_auth
    )
    session = SessionActor(ctx, config.core_url, me.member_id, limits, gate)
    session.is_learner = raft.is_learner
    auth = AuthActor(ctx, storage.auth, AuthSettings(bcrypt_cost=config.bcrypt_cost), backends)
    log.info("core_listening", url=session.url, member_id=f"{me.member_id:x}")
    watch = WatchActor(ctx, me.cluster_id, me.member_id, storage.store.revision)
    loop = Loop([session, raft, storage, lease, watch, auth])
    raft.on_removed = loop.stop
    return loop


def main() -> None:
    config = NodeConfig.from_json(os.environ["CAIRN_CONFIG"])
    setup_logging(config.log_level, "core")
    sys.setswitchinterval(0.0005)
    os.makedirs(config.data_dir, exist_ok=True)
    ctx = zmq.Context()
    try:
        loop = build(config, ctx)
    except Exception as e:  # data dir unusable or locked by another node, core socket in use
        log.error("core_start_failed", error=str(e))
        raise SystemExit(EXIT_FATAL) from e
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: loop.stop())
    loop.run()
    removed = any(isinstance(a, RaftActor) and a.stop_at for a in loop.actors)
    ctx.term()
    log.info("core_stopped", removed=removed)
    if removed:
        raise SystemExit(EXIT_FATAL)  # etcd: a removed member shuts itself down for good


if __name__ == "__main__":
    main()
