"""etcdctl watch against cairn and a real etcd: the same scripted writes must print the same events.

Each server gets the same set of concurrent ``etcdctl watch`` processes (key, prefix, range,
history from a past revision, prev_kv, json and the interactive mode with a progress request),
then the same writes (puts, deletes, txns, a lease revoke, a compaction); the watchers' outputs
are compared after hiding only cluster/member ids and raft terms.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from servers import ETCDCTL_BIN, Server

WATCHES: list[tuple[tuple[str, ...], str | None]] = [
    (("watch", "--prefix", "/config/"), None),
    (("watch", "--prefix", "/config/", "--prev-kv", "-w", "json"), None),
    (("watch", "/config/a", "--rev=2"), None),  # history first, then live
    (("watch", "--prefix", "", "--rev=1", "-w", "json"), None),  # everything, from the start
    (("watch", "/config/a", "/config/c", "--prev-kv"), None),  # a range [a, c)
    (("watch", "/svc/", "/svc0"), None),  # lease revoke deletes, one revision
    (("watch", "-i"), "watch --prefix /config/b\nprogress\n"),
]

BEFORE = [("put", "/config/a", "0"), ("put", "/other", "x")]
WRITES: list[tuple[tuple[str, ...], str | None]] = [
    (("put", "/config/a", "1"), None),
    (("put", "/config/b", "2"), None),
    (("put", "/config/c", "3"), None),
    (("del", "/config/a", "--prev-kv"), None),
    (("put", "/config/a", "again"), None),
    (("txn",), '\nput /config/x 1\nput /config/y 2\ndel /config/b\n\n\n'),
    (("txn",), 'value("/config/x") = "1"\n\nput /config/x 2\n\nput /config/x 3\n\n'),
    (("del", "--prefix", "/config/"), None),
    (("put", "/svc/a", "up"), None),
    (("put", "/svc/b", "up"), None),
    (("del", "/svc/", "/svc0"), None),
    (("put", "/config/z", "last"), None),
]

_IDS = re.compile(r'("(?:cluster_id|member_id|raft_term)":)\d+')


def run_watchers(server: Server, tmp: Path) -> list[str]:
    for argv in BEFORE:
        server.etcdctl(*argv)
    procs = []
    for i, (argv, stdin) in enumerate(WATCHES):
        out = open(tmp / f"{server.kind}-watch-{i}.txt", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [ETCDCTL_BIN, f"--endpoints={server.endpoint}", *argv],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, ETCDCTL_API="3"),
        )
        if stdin is not None:
            proc.stdin.write(stdin.encode())
            proc.stdin.flush()
        procs.append((proc, out))
    time.sleep(1.5)  # every watch created before the first write
    for argv, stdin in WRITES:
        server.etcdctl(*argv, input=stdin)
    time.sleep(1.5)  # every event delivered
    outputs = []
    for i, (proc, out) in enumerate(procs):
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()
        text = (tmp / f"{server.kind}-watch-{i}.txt").read_text(errors="replace")
        outputs.append(_IDS.sub(lambda m: m.group(1) + "<ID>", text))
    return outputs


def test_watch_outputs_match_etcd(etcd: Server, cairn: Server, tmp_path: Path) -> None:
    expected = run_watchers(etcd, tmp_path)
    got = run_watchers(cairn, tmp_path)
    for (argv, _), want, have in zip(WATCHES, expected, got, strict=True):
        assert want.strip(), f"etcd printed nothing for {argv}: the test itself is broken"
        assert have == want, f"etcdctl {' '.join(argv)}\n--- etcd ---\n{want}\n--- cairn ---\n{have}"
