"""The core process's one thread: a blocking ``zmq.Poller`` loop over every actor's sockets.

Actors are a boundary of state and messages, not of threads (one GIL makes threads slower, see
MEASURED.md). Each turn the loop drains every ready socket without blocking and hands an actor its
whole batch at once, then fires due timers, then lets every actor flush what it queued: so an actor
sends one frame per destination per turn however many requests it handled.

Frames an actor queues for another actor of the same loop (its :class:`~actors.mailbox.Mailbox`)
are handed over at the end of the turn instead of going through zmq and the next poll, and what
their handling queues in turn is flushed and handed over too: a request crosses session, raft,
storage and session again in one turn, not four, each of which cost ~20-100 µs (the turn's own
work, a poll, a receive) on a busy machine.

Blocking work an actor would hand to a helper thread (the raft log's fsync) is offered back to the
loop at the end of the turn: when no socket is ready the loop thread does it itself, because it
would only sleep meanwhile, and waking a helper thread and then the loop again costs ~100-200 µs
of scheduling on a busy 2-core machine; when something is ready the helper thread takes it, so
the loop goes on handling what came while the disk works.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial

import structlog
import zmq

from actors.mailbox import Mailbox

log = structlog.get_logger()

DRAIN_LIMIT = 4096  # messages taken from one socket per turn, so one busy peer cannot starve the rest
HAND_OVER_ROUNDS = 32  # rounds of frames handed between actors in one turn before the sockets' turn


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

    def mailboxes(self) -> list[Mailbox]:
        """The mailboxes this actor sends through (its attributes that are one)."""
        return [value for value in vars(self).values() if isinstance(value, Mailbox)]

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
        self.posted: list[tuple[Actor, zmq.Socket, bytes]] = []  # frames handed over, not yet handled
        inboxes = {
            a.name: (a, a.inbox) for a in self.actors if isinstance(getattr(a, "inbox", None), zmq.Socket)
        }
        for actor in self.actors:
            for mailbox in actor.mailboxes():
                if mailbox.name in inboxes:
                    mailbox.hand_over(partial(self._post, *inboxes[mailbox.name]))
        self.running = False

    def _post(self, actor: Actor, inbox: zmq.Socket, frame: bytes) -> None:
        self.posted.append((actor, inbox, frame))

    def _flush(self) -> None:
        """Every actor flushes; frames for actors of this loop are handled at once, and so on."""
        actors = self.actors
        for actor in actors:
            actor.flush()
        rounds = 0
        while self.posted and rounds < HAND_OVER_ROUNDS:
            rounds += 1
            posted, self.posted = self.posted, []
            start = 0
            for i in range(1, len(posted) + 1):  # consecutive frames for one actor: one batch
                if i == len(posted) or posted[i][0] is not posted[start][0]:
                    actor, inbox, _ = posted[start]
                    actor.handle(inbox, [[frame] for _, _, frame in posted[start:i]])
                    start = i
            for actor in actors:
                actor.flush()

    def stop(self) -> None:
        self.running = False

    def run(self) -> None:
        self.running = True
        actors = self.actors
        while self.running:
            blocking = [a for a in actors if a.blocking_work()]
            while blocking:
                here = not self.posted and not self.poller.poll(0)
                for actor in blocking:
                    actor.run_blocking(here)
                if here:
                    self._flush()
                blocking = [a for a in actors if a.blocking_work()]
            now = time.monotonic()
            deadlines = [d for d in (a.deadline() for a in actors) if d is not None]
            timeout_ms = max(0, int((min(deadlines) - now) * 1000) + 1) if deadlines else 1000
            if self.posted:
                timeout_ms = 0
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
            self._flush()
        for actor in actors:
            actor.close()
