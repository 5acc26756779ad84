"""The v3lock service (Lock, Unlock) and `etcdctl lock` against cairn, with real etcd as the reference.

`etcdctl lock` runs etcd's mutex recipe in the client over KV, lease and watch; the Lock service
runs the same recipe in cairn's frontend. Both are checked for mutual exclusion (a counter kept by
read-modify-write), for handing over only when a killed holder's lease has expired, and the
service answers for the same revisions, keys and errors as etcd's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from servers import ETCDCTL_BIN, Cluster, Server
from test_auth import setup_users

from actors.proto import rpc_pb2, v3lock_pb2

HERE = Path(__file__).resolve().parent
LOCKCLIENT = [sys.executable, str(HERE / "lockclient.py")]


def call(server: Server, path: str, request, response_type, timeout: float = 30.0):
    with grpc.insecure_channel(server.endpoint) as channel:
        return response_type.FromString(
            channel.unary_unary(path)(request.SerializeToString(), timeout=timeout)
        )


def grant(server: Server, lease: int, ttl: int) -> None:
    request = rpc_pb2.LeaseGrantRequest(ID=lease, TTL=ttl)
    call(server, "/etcdserverpb.Lease/LeaseGrant", request, rpc_pb2.LeaseGrantResponse)


def lock(server: Server, name: bytes, lease: int, timeout: float = 30.0) -> v3lock_pb2.LockResponse:
    request = v3lock_pb2.LockRequest(name=name, lease=lease)
    return call(server, "/v3lockpb.Lock/Lock", request, v3lock_pb2.LockResponse, timeout)


def unlock(server: Server, key: bytes) -> v3lock_pb2.UnlockResponse:
    return call(server, "/v3lockpb.Lock/Unlock", v3lock_pb2.UnlockRequest(key=key), v3lock_pb2.UnlockResponse)


def keys(server: Server, prefix: bytes) -> list[bytes]:
    request = rpc_pb2.RangeRequest(
        key=prefix, range_end=prefix[:-1] + bytes([prefix[-1] + 1]), keys_only=True
    )
    return [kv.key for kv in call(server, "/etcdserverpb.KV/Range", request, rpc_pb2.RangeResponse).kvs]


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def outcome(run) -> str:
    """One call's result with the member-specific header fields zeroed, or its gRPC error."""
    try:
        response = run()
    except grpc.RpcError as e:
        return f"{e.code().name}: {e.details()}"
    if response.HasField("header"):
        response.header.cluster_id = response.header.member_id = response.header.raft_term = 0
    return str(response).replace("\n", " ")


def lock_script(server: Server) -> list[str]:
    """Holders and waiters on fixed lease ids, so etcd and cairn must give byte-equal answers."""
    for lease in (0x1234, 0x5678, 0x9ABC):
        grant(server, lease, 60)
    seen = [outcome(lambda: lock(server, b"lk", 0x1234))]
    seen.append(outcome(lambda: lock(server, b"lk", 0x1234)))  # the same lease is already in line
    with ThreadPoolExecutor(2) as pool:
        second = pool.submit(outcome, lambda: lock(server, b"lk", 0x5678))
        wait_until(lambda: len(keys(server, b"lk/")) == 2, what="the second waiter's key")
        third = pool.submit(outcome, lambda: lock(server, b"lk", 0x9ABC))
        wait_until(lambda: len(keys(server, b"lk/")) == 3, what="the third waiter's key")
        time.sleep(0.3)
        assert not second.done() and not third.done()
        seen.append(outcome(lambda: unlock(server, b"lk/1234")))
        seen.append(second.result(timeout=30))
        assert not third.done()
        seen.append(outcome(lambda: unlock(server, b"lk/5678")))
        seen.append(third.result(timeout=30))
    # A waiter whose client gives up leaves the line: its key is deleted.
    gave_up = outcome(lambda: lock(server, b"lk", 0x1234, timeout=1.0))
    # etcd answers either way, depending on whether its server or gRPC sees the deadline first
    seen.append(gave_up.replace("UNKNOWN: context deadline exceeded", "DEADLINE_EXCEEDED: Deadline Exceeded"))
    wait_until(lambda: keys(server, b"lk/") == [b"lk/9abc"], what="the cancelled waiter's key to go")
    seen.append(outcome(lambda: lock(server, b"lk", 999)))  # no such lease
    seen.append(outcome(lambda: lock(server, b"", 0x1234)))  # an empty name is a name
    seen.append(outcome(lambda: unlock(server, b"")))
    seen.append(outcome(lambda: unlock(server, b"nokey")))
    every = rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0")
    seen.append(outcome(lambda: call(server, "/etcdserverpb.KV/Range", every, rpc_pb2.RangeResponse)))
    return seen


def test_lock_service_answers_as_etcd(etcd: Server, cairn: Server) -> None:
    expected = lock_script(etcd)
    assert lock_script(cairn) == expected
    assert "DEADLINE_EXCEEDED" in expected[6] and "requested lease not found" in expected[7]


def auth_script(server: Server) -> list[str]:
    """A user with readwrite on /app/ only: the services act with the caller's permissions."""
    setup_users(server)
    with grpc.insecure_channel(server.endpoint) as channel:
        login = channel.unary_unary("/etcdserverpb.Auth/Authenticate")
        answer = login(rpc_pb2.AuthenticateRequest(name="svc", password="pw").SerializeToString(), timeout=30)
        meta = (("token", rpc_pb2.AuthenticateResponse.FromString(answer).token),)

        def as_svc(path: str, request, response_type, metadata=meta):
            answer = channel.unary_unary(path)(request.SerializeToString(), metadata=metadata, timeout=30)
            return response_type.FromString(answer)

        grant = rpc_pb2.LeaseGrantRequest(ID=0x77, TTL=60)
        as_svc("/etcdserverpb.Lease/LeaseGrant", grant, rpc_pb2.LeaseGrantResponse)
        steps = [
            (
                "/v3lockpb.Lock/Lock",
                v3lock_pb2.LockRequest(name=b"/app/lk", lease=0x77),
                v3lock_pb2.LockResponse,
            ),
            (
                "/v3lockpb.Lock/Lock",
                v3lock_pb2.LockRequest(name=b"/other", lease=0x77),
                v3lock_pb2.LockResponse,
            ),
            ("/v3lockpb.Lock/Unlock", v3lock_pb2.UnlockRequest(key=b"/app/lk/77"), v3lock_pb2.UnlockResponse),
            ("/v3lockpb.Lock/Unlock", v3lock_pb2.UnlockRequest(key=b"/other/77"), v3lock_pb2.UnlockResponse),
        ]
        seen = [outcome(lambda step=step: as_svc(*step)) for step in steps]
        seen.append(outcome(lambda: as_svc(*steps[0], metadata=())))  # no token at all
    return seen


def test_lock_acts_with_the_callers_permissions_as_etcd(etcd: Server, cairn: Server) -> None:
    expected = auth_script(etcd)
    assert auth_script(cairn) == expected
    assert "permission denied" in expected[1]


def test_malformed_lock_request_is_refused(cairn: Server) -> None:
    with grpc.insecure_channel(cairn.endpoint) as channel, pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/v3lockpb.Lock/Lock")(b"\x0a\xff", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid v3lockpb.LockRequest" in info.value.details()
    assert lock(cairn, b"after", 0).key.startswith(b"after/")  # and the frontend still serves


def test_waiter_whose_lease_expires_is_not_granted(cairn: Server) -> None:
    """The Jepsen case (etcd 3.4.3): a waiter's lease ends while it waits; it must never be told it holds."""
    grant(cairn, 0xA, 60)
    grant(cairn, 0xB, 2)
    lock(cairn, b"j", 0xA)
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        lock(cairn, b"j", 0xB, timeout=60)
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.UNKNOWN, "mutex: session is expired")
    assert time.monotonic() - start < 30  # told as soon as its key went, not when the holder left
    assert keys(cairn, b"j/") == [b"j/a"]
    unlock(cairn, b"j/a")
    assert keys(cairn, b"j/") == []


def test_waiters_that_give_up_at_once_leave_no_key(cairn: Server) -> None:
    """Deadlines short enough to cancel a Lock while it joins the line, or to pass as its handler
    starts (grpc.aio then does not cancel it: it waited on for no one, and was granted later)."""
    grant(cairn, 0x1, 60)
    lock(cairn, b"g", 0x1)
    for attempt in range(2, 32):
        grant(cairn, attempt, 60)
        with pytest.raises(grpc.RpcError) as info:
            lock(cairn, b"g", attempt, timeout=0.0002 * attempt)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: keys(cairn, b"g/") == [b"g/1"], what="the waiters' keys to go")


def test_rest_client_that_goes_away_leaves_the_line(cairn: Server) -> None:
    grant(cairn, 0x1, 60)
    grant(cairn, 0x2, 60)
    lock(cairn, b"r", 0x1)
    body = json.dumps({"name": "cg==", "lease": 2})  # base64 of "r"
    curl = subprocess.run(
        ["curl", "-s", "--max-time", "1.5", "-X", "POST", cairn.client_url + "/v3/lock/lock", "-d", body],
        capture_output=True,
        timeout=30,
    )
    assert curl.returncode == 28, curl  # curl's "operation timed out": the lock was not granted
    wait_until(lambda: keys(cairn, b"r/") == [b"r/1"], what="the REST waiter's key to go")


# -- mutual exclusion: N processes, one counter ------------------------------------------------------------

PROCESSES, ROUNDS = 5, 50


@pytest.mark.timeout(600)
def test_etcdctl_lock_counter_is_exact(cairn: Server, tmp_path: Path) -> None:
    """Each `etcdctl lock` runs a read-sleep-write of a file: without exclusion updates get lost."""
    counter = tmp_path / "counter"
    counter.write_text("0")
    step = tmp_path / "increment.sh"
    step.write_text(f"n=$(cat {counter}); sleep 0.01; echo $((n+1)) > {counter}\n")
    etcdctl = f"{ETCDCTL_BIN} --endpoints={cairn.endpoint}"
    loop = f"for i in $(seq {ROUNDS}); do {etcdctl} lock cnt -- sh {step} || exit 1; done"
    workers = [subprocess.Popen(["sh", "-c", loop]) for _ in range(PROCESSES)]
    try:
        assert [w.wait(timeout=500) for w in workers] == [0] * PROCESSES
    finally:
        for w in workers:
            w.kill()
    assert int(counter.read_text()) == PROCESSES * ROUNDS
    assert keys(cairn, b"cnt/") == []


@pytest.mark.timeout(600)
def test_lock_service_counter_is_exact(cairn: Server) -> None:
    workers = [
        subprocess.Popen(
            [*LOCKCLIENT, cairn.endpoint, "count", "svc", "counter", str(ROUNDS)], stdout=subprocess.PIPE
        )
        for _ in range(PROCESSES)
    ]
    try:
        assert [w.wait(timeout=500) for w in workers] == [0] * PROCESSES
    finally:
        for w in workers:
            w.kill()
            w.communicate()
    got = call(cairn, "/etcdserverpb.KV/Range", rpc_pb2.RangeRequest(key=b"counter"), rpc_pb2.RangeResponse)
    assert int(got.kvs[0].value) == PROCESSES * ROUNDS
    assert keys(cairn, b"svc/") == []


@pytest.mark.timeout(600)
def test_lock_service_counter_is_exact_across_a_cluster(tmp_path: Path) -> None:
    """Two counting processes on each member of three: followers forward, watch and read for them."""
    with Cluster("cairn", 3, tmp_path) as cluster:
        workers = [
            subprocess.Popen(
                [*LOCKCLIENT, m.endpoint, "count", "cl", "counter", "25"], stdout=subprocess.PIPE
            )
            for m in cluster.members
            for _ in range(2)
        ]
        try:
            assert [w.wait(timeout=500) for w in workers] == [0] * len(workers)
        finally:
            for w in workers:
                w.kill()
                w.communicate()
        request = rpc_pb2.RangeRequest(key=b"counter")
        got = call(cluster.members[1], "/etcdserverpb.KV/Range", request, rpc_pb2.RangeResponse)
        assert int(got.kvs[0].value) == 25 * len(workers)


# -- a killed holder: the next waiter gets the lock when its lease has expired, not before ----------------


class Reader:
    """A process's output read on a thread, so the test can poll for its first line."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self.ready.set()
        self.ready.set()

    def first_line(self, timeout: float = 30.0) -> str:
        assert self.ready.wait(timeout), "the process printed nothing"
        assert self.lines, f"the process exited with {self.proc.poll()}"
        return self.lines[0]

    def output(self, timeout: float = 30.0) -> str:
        """Everything it printed, once it has exited."""
        self.thread.join(timeout)
        return "".join(self.lines)


def lease_alive(server: Server, lease: int) -> bool:
    request = rpc_pb2.LeaseTimeToLiveRequest(ID=lease)
    return (
        call(server, "/etcdserverpb.Lease/LeaseTimeToLive", request, rpc_pb2.LeaseTimeToLiveResponse).TTL > 0
    )


def check_handover_after_expiry(server: Server, holder: subprocess.Popen, lease: int, waiter: Reader) -> None:
    """Kill -9 the holder; the waiter must wait while the holder's lease lives and get the lock after."""
    holder.kill()
    holder.wait(10)
    killed = time.monotonic()
    seen_alive_while_waiting = False
    while not waiter.ready.is_set():
        alive = lease_alive(server, lease)
        seen_alive_while_waiting |= alive and not waiter.ready.is_set()
        assert time.monotonic() - killed < 60, "the waiter never got the lock"
        time.sleep(0.1)
    # The waiter holds now; its grant happened before this read, so the lease must be gone.
    assert not lease_alive(server, lease), "the waiter got the lock while the holder's lease lived"
    assert seen_alive_while_waiting, "the holder's lease was never seen alive after the kill"
    waiter.first_line()


def test_killed_etcdctl_holder_hands_over_after_lease_expiry(cairn: Server) -> None:
    command = [ETCDCTL_BIN, f"--endpoints={cairn.endpoint}", "lock"]
    holder = subprocess.Popen([*command, "--ttl", "5", "kl"], stdout=subprocess.PIPE, text=True)
    waiter = None
    try:
        key = Reader(holder).first_line().strip()
        waiter = subprocess.Popen([*command, "kl"], stdout=subprocess.PIPE, text=True)
        wait_until(lambda: len(keys(cairn, b"kl/")) == 2, what="the waiter's key")
        reader = Reader(waiter)
        check_handover_after_expiry(cairn, holder, int(key.split("/")[1], 16), reader)
        assert reader.first_line().startswith("kl/")
    finally:
        for proc in (holder, waiter):
            if proc is not None:
                proc.kill()
                proc.wait(10)


def test_killed_service_holder_hands_over_after_lease_expiry(cairn: Server) -> None:
    holder = subprocess.Popen(
        [*LOCKCLIENT, cairn.endpoint, "hold", "ks", "5"], stdout=subprocess.PIPE, text=True
    )
    waiter = None
    try:
        held = json.loads(Reader(holder).first_line())
        waiter = subprocess.Popen(
            [*LOCKCLIENT, cairn.endpoint, "hold", "ks", "30"], stdout=subprocess.PIPE, text=True
        )
        wait_until(lambda: len(keys(cairn, b"ks/")) == 2, what="the waiter's key")
        reader = Reader(waiter)
        check_handover_after_expiry(cairn, holder, held["lease"], reader)
        granted = json.loads(reader.first_line())
        assert granted["key"] != held["key"] and granted["revision"] > held["revision"]
    finally:
        for proc in (holder, waiter):
            if proc is not None:
                proc.kill()
                proc.wait(10)
