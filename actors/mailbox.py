"""Inproc plumbing between the actors of one core process.

Every actor binds one PULL inbox at ``inproc://cairn/<name>``; a :class:`Mailbox` is another
actor's PUSH end of it. Records queued during a turn leave as one frame per run of same-kind
records, in the order they were queued: the raft actor relies on that to hand the storage actor
committed entries and then the reads that must see them. When both actors run in the same loop,
the loop takes the frames over instead (:meth:`Mailbox.hand_over`) and gives them to the receiver
in the same turn, in the same order, without a trip through zmq.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import zmq

from actors.protocol import Record, pack


def inbox(ctx: zmq.Context, name: str) -> zmq.Socket:
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind(f"inproc://cairn/{name}")
    return sock


class Mailbox:
    """Records bound for one actor, batched until :meth:`flush`."""

    def __init__(self, ctx: zmq.Context, name: str) -> None:
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"inproc://cairn/{name}")
        self.name = name
        self._runs: list[tuple[int, int, list[Record]]] = []
        self._deliver: Callable[[bytes], None] | None = None

    def hand_over(self, deliver: Callable[[bytes], None]) -> None:
        """From now on :meth:`flush` gives each frame to ``deliver`` instead of the socket."""
        self._deliver = deliver

    def put(self, kind: int, record: Record, aux: int = 0) -> None:
        self.extend(kind, (record,), aux)

    def extend(self, kind: int, records: Sequence[Record], aux: int = 0) -> None:
        if not records:
            return
        runs = self._runs
        if runs and runs[-1][0] == kind and runs[-1][1] == aux:
            runs[-1][2].extend(records)
        else:
            runs.append((kind, aux, list(records)))

    def signal(self, kind: int, aux: int) -> None:
        """A frame with no records: ``aux`` is the whole message."""
        self._runs.append((kind, aux, []))

    def flush(self) -> None:
        if not self._runs:
            return
        runs, self._runs = self._runs, []
        deliver = self._deliver
        for kind, aux, records in runs:
            if deliver is None:
                self.sock.send(pack(kind, records, aux), copy=False)
            else:
                deliver(pack(kind, records, aux))

    def close(self) -> None:
        self.sock.close(linger=0)
