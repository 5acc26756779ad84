"""The v3election service, `etcdctl elect` and `etcdctl lock` on cairn, real etcd as the reference."""

from __future__ import annotations

import base64
import http.client
import json
import re
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from servers import ETCDCTL_BIN, Server
from test_lock import LOCKCLIENT, Reader, call, grant, keys, outcome, wait_until

from actors.proto import v3election_pb2 as pb

CAMPAIGN, PROCLAIM, LEADER, RESIGN, OBSERVE = (
    f"/v3electionpb.Election/{m}" for m in ("Campaign", "Proclaim", "Leader", "Resign", "Observe")
)


class Observer:
    """An Observe stream read on a thread: the leaders' values as they come."""

    def __init__(self, server: Server, name: bytes) -> None:
        self.channel = grpc.insecure_channel(server.endpoint)
        self.stream = self.channel.unary_stream(OBSERVE)(pb.LeaderRequest(name=name).SerializeToString())
        self.responses: list[pb.LeaderResponse] = []
        self.ended: str | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for answer in self.stream:
                self.responses.append(pb.LeaderResponse.FromString(answer))
        except grpc.RpcError as e:
            self.ended = e.code().name

    def wait_for(self, count: int) -> list[pb.LeaderResponse]:
        wait_until(lambda: len(self.responses) >= count, what=f"{count} observed leaders")
        return self.responses

    def close(self) -> None:
        self.stream.cancel()
        self.channel.close()


def election_script(server: Server) -> list[str]:
    for lease in (0x1234, 0x5678):
        grant(server, lease, 60)
    campaign = pb.CampaignRequest(name=b"el", lease=0x1234, value=b"v1")
    seen = [outcome(lambda: call(server, LEADER, pb.LeaderRequest(name=b"el"), pb.LeaderResponse))]
    first = call(server, CAMPAIGN, campaign, pb.CampaignResponse)
    seen.append(outcome(lambda: first))
    campaign.value = b"v2"  # campaigning again on the same lease proclaims the new value
    seen.append(outcome(lambda: call(server, CAMPAIGN, campaign, pb.CampaignResponse)))
    seen.append(outcome(lambda: call(server, LEADER, pb.LeaderRequest(name=b"el"), pb.LeaderResponse)))
    observer = Observer(server, b"el")
    try:
        observer.wait_for(1)
        stale = pb.LeaderKey(name=b"el", key=first.leader.key, rev=1, lease=0x1234)
        for request in (pb.ProclaimRequest(value=b"x"), pb.ProclaimRequest(leader=stale, value=b"x")):
            seen.append(outcome(lambda r=request: call(server, PROCLAIM, r, pb.ProclaimResponse)))
        proclaim = pb.ProclaimRequest(leader=first.leader, value=b"v3")
        seen.append(outcome(lambda: call(server, PROCLAIM, proclaim, pb.ProclaimResponse)))
        with ThreadPoolExecutor(1) as pool:
            second = pb.CampaignRequest(name=b"el", lease=0x5678, value=b"w")
            waiting = pool.submit(outcome, lambda: call(server, CAMPAIGN, second, pb.CampaignResponse))
            wait_until(lambda: len(keys(server, b"el/")) == 2, what="the second candidate's key")
            time.sleep(0.3)
            assert not waiting.done()
            for request in (pb.ResignRequest(), pb.ResignRequest(leader=stale)):
                seen.append(outcome(lambda r=request: call(server, RESIGN, r, pb.ResignResponse)))
            assert not waiting.done()
            resign = pb.ResignRequest(leader=first.leader)
            seen.append(outcome(lambda: call(server, RESIGN, resign, pb.ResignResponse)))
            seen.append(waiting.result(timeout=30))
        seen.extend(outcome(lambda r=r: r) for r in observer.wait_for(3)[:3])
    finally:
        observer.close()
    seen.append(outcome(lambda: call(server, LEADER, pb.LeaderRequest(name=b"el"), pb.LeaderResponse)))
    bad_lease = pb.CampaignRequest(name=b"el", lease=77, value=b"v")
    seen.append(outcome(lambda: call(server, CAMPAIGN, bad_lease, pb.CampaignResponse)))
    return seen


def test_election_service_answers_as_etcd(etcd: Server, cairn: Server) -> None:
    expected = election_script(etcd)
    assert election_script(cairn) == expected
    assert [s.split(":")[0] for s in expected if s.startswith("UNKNOWN")] == ["UNKNOWN"] * 5


def test_candidate_whose_lease_expires_is_not_elected(cairn: Server) -> None:
    grant(cairn, 0xA, 60)
    grant(cairn, 0xB, 2)
    call(cairn, CAMPAIGN, pb.CampaignRequest(name=b"x", lease=0xA, value=b"a"), pb.CampaignResponse)
    start = time.monotonic()
    expiring = pb.CampaignRequest(name=b"x", lease=0xB, value=b"b")
    assert outcome(lambda: call(cairn, CAMPAIGN, expiring, pb.CampaignResponse, 60)) == (
        "UNKNOWN: election: not leader"
    )
    assert time.monotonic() - start < 30  # told when its key went, not when the leader resigned
    assert keys(cairn, b"x/") == [b"x/a"]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def rest_script(server: Server) -> list[str]:
    """The JSON gateway's lock and election paths, Observe's newline-delimited stream included."""

    def post(path: str, body: dict) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", server.client_port, timeout=30)
        try:
            conn.request("POST", path, json.dumps(body))
            response = conn.getresponse()
            return f"{path} {response.status} {response.read().decode()}"
        finally:
            conn.close()

    leader = {"name": b64("el"), "key": b64("el/1234"), "rev": 4, "lease": 0x1234}
    seen = [
        post("/v3/lease/grant", {"TTL": 30, "ID": 0x1234}),
        post("/v3/lock/lock", {"name": b64("lk"), "lease": 0x1234}),
        post("/v3/lock/lock", {"name": b64("lk"), "lease": 999}),
        post("/v3/lock/lock", {"name": 5}),
        post("/v3/lock/unlock", {"key": b64("lk/1234")}),
        post("/v3beta/lock/unlock", {}),
        post("/v3/election/leader", {"name": b64("el")}),
        post("/v3/election/campaign", {"name": b64("el"), "lease": 0x1234, "value": b64("v1")}),
        post("/v3/election/leader", {"name": b64("el")}),
        post("/v3/election/proclaim", {"value": b64("v2")}),
        post("/v3/election/proclaim", {"leader": leader, "value": b64("v2")}),
    ]
    conn = http.client.HTTPConnection("127.0.0.1", server.client_port, timeout=30)
    try:
        conn.request("POST", "/v3/election/observe", json.dumps({"name": b64("el")}))
        stream = conn.getresponse()
        seen.append(f"observe {stream.status} {stream.getheader('content-type')}")
        seen.append(stream.readline().decode())
        seen.append(post("/v3/election/proclaim", {"leader": leader, "value": b64("v3")}))
        seen.append(stream.readline().decode())
    finally:
        conn.close()
    seen.append(post("/v3/election/resign", {"leader": leader}))
    return [re.sub(r'"(cluster_id|member_id|raft_term)":"\d+"', r'"\1":0', s) for s in seen]


def test_rest_lock_and_election_answer_as_etcd(etcd: Server, cairn: Server) -> None:
    assert rest_script(cairn) == rest_script(etcd)


def test_observers_see_each_leader_once_in_order(cairn: Server) -> None:
    """Three candidates on 3 s leases; kill -9 each leader in turn; `etcdctl elect -l` and an Observe
    stream both see c1, c2, c3, each once, in that order."""
    candidates: list[subprocess.Popen] = []
    listeners = [
        subprocess.Popen(
            [ETCDCTL_BIN, f"--endpoints={cairn.endpoint}", "elect", "-l", "el"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    observer = Observer(cairn, b"el")
    try:
        for n in (1, 2, 3):
            command = [*LOCKCLIENT, cairn.endpoint, "campaign", "el", f"c{n}", "3"]
            candidates.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
            wait_until(lambda n=n: len(keys(cairn, b"el/")) == n, what=f"candidate c{n}'s key")
        winners = [Reader(c) for c in candidates]
        for n in (1, 2, 3):
            leader = call(cairn, LEADER, pb.LeaderRequest(name=b"el"), pb.LeaderResponse)
            assert leader.kv.value == f"c{n}".encode()
            assert json.loads(winners[n - 1].first_line())["key"] == leader.kv.key.decode()
            assert not any(w.ready.is_set() for w in winners[n:]), f"a later candidate won while c{n} led"
            if n < 3:
                candidates[n - 1].kill()
                candidates[n - 1].wait(10)
                winners[n].first_line(timeout=60)
        assert [r.kv.value for r in observer.wait_for(3)] == [b"c1", b"c2", b"c3"]
        time.sleep(0.5)
        for listener in listeners:
            listener.send_signal(signal.SIGTERM)
            out, _ = listener.communicate(timeout=30)
            lines = out.splitlines()
            assert lines[1::2] == ["c1", "c2", "c3"], out
    finally:
        observer.close()
        for proc in candidates + listeners:
            proc.kill()
            proc.wait(10)
    assert len(observer.responses) == 3


def etcdctl_script(server: Server) -> list[str]:
    """`etcdctl lock` and `etcdctl elect` as a user runs them, lease ids written as <lease>."""
    base = [ETCDCTL_BIN, f"--endpoints={server.endpoint}"]

    def run(*args: str) -> str:
        done = subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)
        return f"{done.returncode} {done.stdout!r} {done.stderr!r}"

    def background(*args: str) -> Reader:
        command = [*base, *args]
        return Reader(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))

    def finish(reader: Reader, stop: bool = True) -> str:
        if stop:
            reader.proc.send_signal(signal.SIGTERM)
        code = reader.proc.wait(30)
        assert reader.proc.stderr is not None
        return f"{code} {reader.output()!r} {reader.proc.stderr.read()!r}"

    seen = [run("lock", "L", "--", "sh", "-c", "echo $ETCD_LOCK_KEY $ETCD_LOCK_REV")]
    seen.append(run("put", "k", "v"))
    holder = background("lock", "L")
    holder.first_line()
    waiter = background("lock", "L", "--", "sh", "-c", "echo got $ETCD_LOCK_REV")
    wait_until(lambda: len(keys(server, b"L/")) == 2, what="the waiter's key")
    seen.append(finish(holder))
    seen.append(finish(waiter, stop=False))
    leader = background("elect", "E", "p1")
    listener = background("elect", "-l", "E")
    leader.first_line()
    second = background("elect", "E", "p2")
    wait_until(lambda: len(keys(server, b"E/")) == 2, what="the second candidate's key")
    seen.append(finish(leader))
    wait_until(lambda: len(keys(server, b"E/")) == 1, what="the first candidate to resign")
    seen.append(run("elect", "E"))
    seen.append(run("get", "E", "--prefix", "--print-value-only"))
    second.first_line()
    wait_until(lambda: len(listener.lines) == 4, what="the listener to see both leaders")
    seen.append(finish(second))
    seen.append(finish(listener))
    seen.append(run("get", "k", "-w", "fields"))
    seen = [re.sub(r"/[0-9a-f]{8,16}\b", "/<lease>", s) for s in seen]
    # etcdctl logs a cancelled in-flight call when it is stopped, or not, as the timing falls
    return [re.sub(r'\{"level":"warn"[^}]*context canceled"\}\\n', "", s) for s in seen]


def test_etcdctl_lock_and_elect_print_as_etcd(etcd: Server, cairn: Server) -> None:
    expected = etcdctl_script(etcd)
    got = etcdctl_script(cairn)
    header = re.compile(r'"(ClusterID|MemberID|RaftTerm)" : \d+')
    assert [header.sub("", s) for s in got] == [header.sub("", s) for s in expected]
