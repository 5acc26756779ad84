"""The core process's one thread: a blocking ``zmq.Poller`` loop over every actor's sockets.

Actors are a boundary of state and messages, not of threads (one GIL makes threads slower, see
MEASURED.md). Each turn the loop drains every ready socket without blocking and hands an actor its
whole batch at once, then fires due timers, then lets every actor flush what it queued: so an actor
sends one frame per destination per turn however many requests it handled.

Blocking work an actor would hand to a helper thread (the raft log's fsync) is offered back to the
loop at the end of the turn: when no socket is ready the loop thread does it itself, because it
would only sleep meanwhile, and waking a helper thread and then the loop again costs ~100-200 µs
of scheduling on a busy 2-core machine; when something is ready the helper thread takes it, so
the loop goes on handling what came while the disk works.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog
import zmq

log = structlog.get_logger()

DRAIN_LIMIT = 4096  # messages taken from one socket per turn, so one busy peer cannot starve the rest


class Actor:
    """What the loop needs from an actor; the actor's logic lives in its own pure modules."""

    name = "actor"

    def sockets(self) -> Sequence[zmq.Socket]:
        """The sockets the loop polls for this actor."""
        return ()

    def handle(self, sock: zmq.Socket, messages: list[list[bytes]]) -> None:
        """Everything that arrived on ``sock`` since the last turn, each as its list of frames."""

    def deadline(self) -> float | None:
        """The monotonic time of this actor's next timer, or None."""
        return None

    def on_time(self, now: float) -> None:
        """Called once a turn when ``deadline()`` has passed."""

    def flush(self) -> None:
        """Send what this turn queued (one frame per destination)."""

    def blocking_work(self) -> bool:
        """Whether work that blocks (without holding the GIL) waits for :meth:`run_blocking`."""
        return False

    def run_blocking(self, here: bool) -> None:
        """Do the waiting blocking work on the loop's thread (``here``: nothing else is ready) or
        hand it to a helper thread."""

    def close(self) -> None:
        """Release sockets and files; the loop has stopped."""


class Loop:
    """Runs actors until :meth:`stop`; never blocks longer than the nearest timer."""

    def __init__(self, actors: Sequence[Actor]) -> None:
        self.actors = list(actors)
        self.poller = zmq.Poller()
        self.owner: dict[zmq.Socket, Actor] = {}
        for actor in self.actors:
            for sock in actor.sockets():
                self.poller.register(sock, zmq.POLLIN)
                self.owner[sock] = actor
        self.running = False

    def stop(self) -> None:
        self.running = False

    def run(self) -> None:
        self.running = True
        actors = self.actors
        while self.running:
            blocking = [a for a in actors if a.blocking_work()]
            while blocking:
                here = not self.poller.poll(0)
                for actor in blocking:
                    actor.run_blocking(here)
                if here:
                    for actor in actors:
                        actor.flush()
                blocking = [a for a in actors if a.blocking_work()]
            now = time.monotonic()
            deadlines = [d for d in (a.deadline() for a in actors) if d is not None]
            timeout_ms = max(0, int((min(deadlines) - now) * 1000) + 1) if deadlines else 1000
            for sock, _ in self.poller.poll(timeout_ms):
                messages = []
                # EVENTS instead of catching zmq.Again: an exception per drain costs ~5 µs
                while len(messages) < DRAIN_LIMIT and sock.get(zmq.EVENTS) & zmq.POLLIN:
                    messages.append(sock.recv_multipart(zmq.NOBLOCK))
                if messages:
                    self.owner[sock].handle(sock, messages)
            now = time.monotonic()
            for actor in actors:
                due = actor.deadline()
                if due is not None and due <= now:
                    actor.on_time(now)
            for actor in actors:
                actor.flush()
        for actor in actors:
            actor.close()
