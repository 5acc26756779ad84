"""The queue, barrier and double-barrier recipes with several client processes at once.

Every participant is its own interpreter with its own native client, as separate machines would
be; what each saw comes back as JSON and is checked for the recipe's guarantee, not for timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
from servers import REPO
from zmq_servers import ZmqNode

from node.client import Client
from node.recipes import Barrier, Queue

PRODUCERS, CONSUMERS, ITEMS = 3, 3, 30
PARTICIPANTS = 4


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZmqNode]:
    node = ZmqNode(tmp_path_factory.mktemp("recipes") / "cairn")
    node.server.start()
    try:
        yield node
    finally:
        node.server.stop()


def spawn(script: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def results(processes: list[subprocess.Popen[str]]) -> list[object]:
    out = []
    for p in processes:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


PRODUCER = """
    import json, sys
    from node.client import Client
    from node.recipes import Queue
    url, me, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with Client(url) as c:
        q = Queue(c, "/jobs")
        for i in range(n):
            q.push(f"{me}:{i}")
    print(json.dumps("done"))
"""
CONSUMER = """
    import json, sys
    from node.client import Client
    from node.recipes import Queue
    got = []
    with Client(sys.argv[1]) as c:
        q = Queue(c, "/jobs")
        while (item := q.pop(timeout=60).decode()) != "STOP":
            got.append(item)
    print(json.dumps(got))
"""


def test_queue_delivers_every_item_once_in_order(node: ZmqNode) -> None:
    consumers = [spawn(CONSUMER, node.url) for _ in range(CONSUMERS)]  # waiting on an empty queue first
    producers = [spawn(PRODUCER, node.url, f"p{i}", ITEMS) for i in range(PRODUCERS)]
    assert results(producers) == ["done"] * PRODUCERS
    with Client(node.url) as c:
        for _ in range(CONSUMERS):
            Queue(c, "/jobs").push("STOP")  # after every item: FIFO hands them out last
        seen = results(consumers)
        assert Queue(c, "/jobs").size() == 0
    everything = [item for got in seen for item in got]
    assert sorted(everything) == sorted(f"p{p}:{i}" for p in range(PRODUCERS) for i in range(ITEMS))
    for got in seen:  # each consumer sees each producer's items in the order they were pushed
        for p in range(PRODUCERS):
            mine = [int(item.split(":")[1]) for item in got if item.startswith(f"p{p}:")]
            assert mine == sorted(mine)


DOUBLE_BARRIER = """
    import json, sys
    from node.client import Client
    from node.recipes import DoubleBarrier
    url, me, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with Client(url) as c:
        barrier = DoubleBarrier(c, "/phase", n)
        c.put(f"/arrived/{me}", "1")
        barrier.enter(timeout=60)
        arrived = c.range("/arrived/", prefix=True, count_only=True).count
        c.put(f"/leaving/{me}", "1")
        barrier.leave(timeout=60)
        leaving = c.range("/leaving/", prefix=True, count_only=True).count
    print(json.dumps([arrived, leaving]))
"""


def test_double_barrier_lets_everyone_in_and_out_together(node: ZmqNode) -> None:
    """Nobody passes enter() before all have arrived, nor leave() before all are leaving."""
    procs = [spawn(DOUBLE_BARRIER, node.url, i, PARTICIPANTS) for i in range(PARTICIPANTS)]
    assert results(procs) == [[PARTICIPANTS, PARTICIPANTS]] * PARTICIPANTS
    with Client(node.url) as c:
        assert c.range("/phase/", prefix=True, count_only=True).count == 0  # nothing left behind


WAITER = """
    import json, sys
    from node.client import Client
    from node.recipes import Barrier
    with Client(sys.argv[1]) as c:
        c.put(f"/waiting/{sys.argv[2]}", "1")
        Barrier(c, "/gate").wait(timeout=60)
        print(json.dumps(c.get("/released") is not None))
"""


def test_barrier_holds_waiters_until_released(node: ZmqNode) -> None:
    with Client(node.url) as c:
        gate = Barrier(c, "/gate")
        assert gate.hold() and not gate.hold()
        waiters = [spawn(WAITER, node.url, i) for i in range(PARTICIPANTS)]
        deadline = time.monotonic() + 60
        while c.range("/waiting/", prefix=True, count_only=True).count < PARTICIPANTS:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert all(w.poll() is None for w in waiters)
        c.put("/released", "yes")  # written before the release: a waiter that passed early sees none
        gate.release()
        assert results(waiters) == [True] * PARTICIPANTS
        gate.wait(timeout=5)  # down: returns at once


def cairnctl(node: ZmqNode, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tools.cairnctl", "--zmq", node.url, *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_cairnctl_queue_push_and_pop(node: ZmqNode) -> None:
    for value in ("first", "second"):
        assert cairnctl(node, "queue", "push", "/cli-q", value).returncode == 0
    assert cairnctl(node, "queue", "size", "/cli-q").stdout == "2\n"
    assert cairnctl(node, "queue", "pop", "/cli-q").stdout == "first\n"
    assert cairnctl(node, "queue", "pop", "/cli-q").stdout == "second\n"
    empty = cairnctl(node, "queue", "pop", "/cli-q", "--wait", "1")
    assert empty.returncode == 1 and "queue /cli-q stayed empty for 1 s" in empty.stderr
