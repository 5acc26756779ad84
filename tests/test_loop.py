"""The core loop: frames between its actors are handed over within the turn, in order; blocking work
runs on the loop's thread only when no socket is ready."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import pytest
import zmq

from actors.loop import Actor, Loop
from actors.mailbox import Mailbox, inbox
from actors.protocol import pack, unpack

_names = itertools.count()


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.term()


class Front(Actor):
    """Takes frames from a socket outside the loop and passes their records on to ``target``."""

    def __init__(self, ctx: zmq.Context, target: str) -> None:
        self.name = f"front-{next(_names)}"
        self.outside = ctx.socket(zmq.PULL)
        self.address = f"inproc://test/{self.name}"
        self.outside.bind(self.address)
        self.inbox = inbox(ctx, self.name)
        self.out = Mailbox(ctx, target)

    def sockets(self) -> Sequence[zmq.Socket]:
        return (self.outside, self.inbox)

    def handle(self, sock: zmq.Socket, messages: list[list[bytes]]) -> None:
        for (frame,) in messages:
            kind, aux, records = unpack(frame)
            self.out.extend(kind, records, aux)

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> None:
        for sock in (self.outside, self.inbox):
            sock.close(linger=0)
        self.out.close()


class Sink(Actor):
    """Records what reaches its inbox, and how; stops the loop once it has ``expect`` records."""

    def __init__(self, ctx: zmq.Context, name: str, expect: int) -> None:
        self.name = name
        self.inbox = inbox(ctx, name)
        self.expect = expect
        self.got: list[tuple[int, int, bytes]] = []
        self.calls = 0
        self.loop: Loop | None = None

    def sockets(self) -> Sequence[zmq.Socket]:
        return (self.inbox,)

    def handle(self, sock: zmq.Socket, messages: list[list[bytes]]) -> None:
        assert sock is self.inbox
        self.calls += 1
        for (frame,) in messages:
            self.got.extend(unpack(frame)[2])
        if len(self.got) >= self.expect and self.loop is not None:
            self.loop.stop()

    def close(self) -> None:
        self.inbox.close(linger=0)


def test_frames_between_actors_are_handled_in_the_same_turn_in_order(ctx: zmq.Context) -> None:
    sink = Sink(ctx, f"sink-{next(_names)}", expect=5)
    front = Front(ctx, sink.name)
    loop = Loop([front, sink])
    sink.loop = loop
    polls = 0
    real_poll = loop.poller.poll

    def counting_poll(timeout: int | None = None) -> list:
        nonlocal polls
        polls += 1
        return real_poll(timeout)

    loop.poller.poll = counting_poll  # type: ignore[method-assign]
    feed = ctx.socket(zmq.PUSH)
    feed.connect(front.address)
    records = [(i, 1, b"r%d" % i) for i in range(5)]
    feed.send(pack(7, records[:3]))
    feed.send(pack(7, records[3:]))
    loop.run()
    feed.close(linger=0)
    assert sink.got == records
    assert sink.calls == 1  # one batch, handed over without a trip through zmq
    assert polls == 1  # the poll that brought the two frames in: no turn of its own for the sink


def test_a_mailbox_to_an_actor_outside_the_loop_still_sends(ctx: zmq.Context) -> None:
    outside = inbox(ctx, f"outside-{next(_names)}")
    front = Front(ctx, outside.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit("/", 1)[1])
    loop = Loop([front])
    front.handle(front.inbox, [[pack(3, [(1, 2, b"x")], aux=9)]])
    loop._flush()
    assert outside.poll(5000)
    assert unpack(outside.recv()) == (3, 9, [(1, 2, b"x")])
    loop.stop()
    front.close()
    outside.close(linger=0)


class Blocking(Actor):
    """Has one piece of blocking work; records where the loop ran it, then stops the loop."""

    name = "blocking"

    def __init__(self, ctx: zmq.Context) -> None:
        self.wakeup = ctx.socket(zmq.PULL)
        self.address = f"inproc://test/blocking-{next(_names)}"
        self.wakeup.bind(self.address)
        self.pending = True
        self.ran_here: list[bool] = []
        self.loop: Loop | None = None

    def sockets(self) -> Sequence[zmq.Socket]:
        return (self.wakeup,)

    def blocking_work(self) -> bool:
        return self.pending

    def run_blocking(self, here: bool) -> None:
        self.pending = False
        self.ran_here.append(here)

    def deadline(self) -> float | None:
        return 0.0  # due at once: the loop's first turn ends with on_time

    def on_time(self, now: float) -> None:
        assert self.loop is not None
        self.loop.stop()

    def close(self) -> None:
        self.wakeup.close(linger=0)


@pytest.mark.parametrize("ready", [False, True])
def test_blocking_work_runs_on_the_loop_only_when_nothing_is_ready(ctx: zmq.Context, ready: bool) -> None:
    actor = Blocking(ctx)
    loop = Loop([actor])
    actor.loop = loop
    feed = ctx.socket(zmq.PUSH)
    feed.connect(actor.address)
    if ready:
        feed.send(b"work for the loop")
        assert actor.wakeup.poll(5000)
    loop.run()
    feed.close(linger=0)
    assert actor.ran_here == [not ready]  # ready: a helper thread would take it
