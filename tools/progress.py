"""A progress bar on stderr for long cairnctl operations (snapshot save and restore).

On a terminal it redraws one line in place (at most ten times a second); when stderr is a file or
a pipe it stays quiet until the end and then prints one summary line, so logs are not flooded.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30


def human_bytes(n: int) -> str:
    """Bytes as etcdctl prints them (go-humanize's SI ``Bytes``: ``119 kB``, ``2.1 MB``)."""
    if n < 10:
        return f"{n} B"
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
    exponent = 0
    while n >= 1000 ** (exponent + 1) and exponent < len(units) - 1:
        exponent += 1
    value = int(n / 1000**exponent * 10 + 0.5) / 10
    return f"{value:.1f} {units[exponent]}" if value < 10 else f"{value:.0f} {units[exponent]}"


class ProgressBar:
    """Counts work done toward ``total`` (bytes, unless ``unit`` says otherwise)."""

    def __init__(self, label: str, total: int, unit: str = "bytes", stream: TextIO | None = None) -> None:
        self.label = label
        self.total = max(total, 0)
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.start = time.monotonic()
        self.drawn = 0.0
        self.live = self.stream.isatty()

    def __call__(self, amount: int) -> None:
        self.done += amount
        now = time.monotonic()
        if self.live and now - self.drawn >= 0.1:
            self.drawn = now
            self.stream.write("\r" + self._line())
            self.stream.flush()

    def _amount(self, n: int) -> str:
        return human_bytes(n) if self.unit == "bytes" else f"{n} {self.unit}"

    def _line(self) -> str:
        fraction = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = int(fraction * WIDTH)
        bar = "#" * filled + "-" * (WIDTH - filled)
        return f"{self.label} [{bar}] {fraction:4.0%} {self._amount(self.done)} / {self._amount(self.total)}"

    def close(self) -> None:
        seconds = time.monotonic() - self.start
        end = "\r" if self.live else ""
        self.stream.write(f"{end}{self._line()} in {seconds:.1f}s\n")
        self.stream.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        elif self.live:
            self.stream.write("\n")
