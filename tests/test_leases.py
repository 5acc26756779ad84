"""Leases on a real node: keep-alive keeps a key, silence lets it expire on time, mass expiry."""

from __future__ import annotations

import threading
import time

import grpc
from servers import Server

from actors.proto import rpc_pb2, rpc_pb2_grpc


def stubs(server: Server) -> tuple[grpc.Channel, rpc_pb2_grpc.KVStub, rpc_pb2_grpc.LeaseStub]:
    channel = grpc.insecure_channel(server.endpoint)
    return channel, rpc_pb2_grpc.KVStub(channel), rpc_pb2_grpc.LeaseStub(channel)


def exists(kv: rpc_pb2_grpc.KVStub, key: bytes) -> bool:
    return kv.Range(rpc_pb2.RangeRequest(key=key), timeout=5).count == 1


def test_kept_alive_key_stays_then_expires_within_ttl_plus_one_second(cairn: Server) -> None:
    channel, kv, lease = stubs(cairn)
    with channel:
        ttl = 2
        lease_id = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=ttl), timeout=5).ID
        kv.Put(rpc_pb2.PutRequest(key=b"/services/api/a", value=b"up", lease=lease_id), timeout=5)
        stop = threading.Event()
        last_ack = [time.monotonic()]

        def requests():
            while not stop.is_set():
                yield rpc_pb2.LeaseKeepAliveRequest(ID=lease_id)
                time.sleep(0.5)

        def keep_alive() -> None:
            for response in lease.LeaseKeepAlive(requests(), timeout=30):
                assert ttl == response.TTL
                last_ack[0] = time.monotonic()

        thread = threading.Thread(target=keep_alive)
        thread.start()
        time.sleep(3 * ttl)  # three TTLs: only the keep-alives keep it
        assert exists(kv, b"/services/api/a")
        stop.set()
        thread.join(10)
        while exists(kv, b"/services/api/a"):
            time.sleep(0.05)
        gone_after = time.monotonic() - last_ack[0]
        assert gone_after <= ttl + 1.0, f"key outlived its lease by {gone_after - ttl:.2f}s"
        ttl_resp = lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id), timeout=5)
        assert ttl_resp.TTL == -1


def test_a_thousand_leases_expiring_together(cairn: Server) -> None:
    channel, kv, lease = stubs(cairn)
    with channel:
        ids = []
        for i in range(1000):
            lease_id = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=2), timeout=5).ID
            kv.Put(rpc_pb2.PutRequest(key=b"/mass/%04d" % i, value=b"x", lease=lease_id), timeout=5)
            ids.append(lease_id)
        prefix = rpc_pb2.RangeRequest(key=b"/mass/", range_end=b"/mass0", count_only=True)
        deadline = time.monotonic() + 30
        while kv.Range(prefix, timeout=5).count and time.monotonic() < deadline:
            time.sleep(0.2)
        assert kv.Range(prefix, timeout=5).count == 0
        assert list(lease.LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=5).leases) == []
        kv.Put(rpc_pb2.PutRequest(key=b"still", value=b"serving"), timeout=5)
        assert exists(kv, b"still")


def test_negative_lease_ids_are_leases_like_any_other(cairn: Server) -> None:
    """etcd's lease ids are int64: a client may choose a negative one (found by the REST fuzzer)."""
    channel, kv, lease = stubs(cairn)
    with channel:
        granted = lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(ID=-13490, TTL=5), timeout=5)
        assert (granted.ID, granted.TTL) == (-13490, 5)
        kv.Put(rpc_pb2.PutRequest(key=b"neg", value=b"1", lease=-13490), timeout=5)
        ttl = lease.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=-13490, keys=True), timeout=5)
        assert ttl.grantedTTL == 5 and list(ttl.keys) == [b"neg"]
        lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=-13490), timeout=5)
        assert not exists(kv, b"neg")
        assert exists(kv, b"neg") is False and kv.Put(rpc_pb2.PutRequest(key=b"ok", value=b"1"), timeout=5)
