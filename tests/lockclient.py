"""A client process of the v3lock and v3election services, for tests that need one to kill.

    python lockclient.py ENDPOINT count NAME COUNTER_KEY N   # N times: Lock, read, write +1, Unlock
    python lockclient.py ENDPOINT hold NAME TTL              # Lock on a kept-alive lease, print, wait
    python lockclient.py ENDPOINT campaign NAME VALUE TTL    # Campaign likewise, print, wait

A holder keeps its lease alive from a thread, so ``kill -9`` of this process is what lets the
lease expire. Each line printed is JSON and flushed at once.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator

import grpc

from actors.proto import rpc_pb2, v3election_pb2, v3lock_pb2


class Node:
    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(endpoint)

    def call(self, path: str, request, response_type, timeout: float = 120.0):
        answer = self.channel.unary_unary(path)(request.SerializeToString(), timeout=timeout)
        return response_type.FromString(answer)

    def lease(self, ttl: int) -> int:
        """A lease of ``ttl`` seconds, kept alive every ttl/3 seconds for as long as this process lives."""
        lease = self.call(
            "/etcdserverpb.Lease/LeaseGrant", rpc_pb2.LeaseGrantRequest(TTL=ttl), rpc_pb2.LeaseGrantResponse
        ).ID

        def beats() -> Iterator[bytes]:
            while True:
                yield rpc_pb2.LeaseKeepAliveRequest(ID=lease).SerializeToString()
                time.sleep(ttl / 3)

        def keep_alive() -> None:
            while True:
                try:
                    for _ in self.channel.stream_stream("/etcdserverpb.Lease/LeaseKeepAlive")(beats()):
                        pass
                except grpc.RpcError as e:
                    say(keepalive_error=e.details())
                    time.sleep(1)

        threading.Thread(target=keep_alive, daemon=True).start()
        return lease


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def count(node: Node, name: bytes, counter: bytes, times: int) -> None:
    """Read-modify-write under the lock: only mutual exclusion keeps the final count exact."""
    lease = node.lease(60)
    for _ in range(times):
        held = node.call(
            "/v3lockpb.Lock/Lock", v3lock_pb2.LockRequest(name=name, lease=lease), v3lock_pb2.LockResponse
        )
        got = node.call("/etcdserverpb.KV/Range", rpc_pb2.RangeRequest(key=counter), rpc_pb2.RangeResponse)
        value = int(got.kvs[0].value) if got.kvs else 0
        time.sleep(0.002)  # widen the window a missing exclusion would lose an update in
        put = rpc_pb2.PutRequest(key=counter, value=str(value + 1).encode())
        node.call("/etcdserverpb.KV/Put", put, rpc_pb2.PutResponse)
        node.call("/v3lockpb.Lock/Unlock", v3lock_pb2.UnlockRequest(key=held.key), v3lock_pb2.UnlockResponse)
    say(done=times)


def main() -> None:
    endpoint, mode, *args = sys.argv[1:]
    node = Node(endpoint)
    if mode == "count":
        count(node, args[0].encode(), args[1].encode(), int(args[2]))
        return
    if mode == "hold":
        lease = node.lease(int(args[1]))
        held = node.call(
            "/v3lockpb.Lock/Lock",
            v3lock_pb2.LockRequest(name=args[0].encode(), lease=lease),
            v3lock_pb2.LockResponse,
        )
        say(key=held.key.decode(), lease=lease, revision=held.header.revision)
    elif mode == "campaign":
        lease = node.lease(int(args[2]))
        request = v3election_pb2.CampaignRequest(name=args[0].encode(), value=args[1].encode(), lease=lease)
        won = node.call("/v3electionpb.Election/Campaign", request, v3election_pb2.CampaignResponse)
        say(key=won.leader.key.decode(), lease=lease, rev=won.leader.rev)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
