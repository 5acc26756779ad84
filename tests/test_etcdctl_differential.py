"""Differential test: the same etcdctl 3.4 session against a real etcd and against cairn.

etcdctl is the reference client every etcd user has; if its stdout, stderr and exit code are the same
for cairn as for etcd, command by command, cairn is compatible at the level users see (including error
codes and messages, which etcdctl prints verbatim, and revisions, which must match exactly).

Only values that legitimately differ between two correct servers are normalized: cluster/member ids,
raft term, lease ids (random per server), the server's version string, timings, timestamps, the
endpoint's port and the client's random connection id.  `test_differential_harness_self_check` runs the
session against two fresh real etcds, proving the normalizer hides no real difference it needn't and
leaves none it should hide.

The session is data (`SEQUENCE`): append (args, stdin) tuples to extend it.  In args and stdin, `{lease0}`,
`{lease1}`, ... stand for the ids of the leases granted so far *on that server* (read from `lease grant`
output), and `{rev}` / `{rev-N}` / `{rev+N}` for the latest header revision printed so far (by the
reference server), so compaction steps stay correct when steps are inserted before them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from servers import Server

TXN_TOO_MANY_OPS = "\n" + "".join(f"put many{i:03d} v\n" for i in range(129)) + "\n\n"
BIG_VALUE = "x" * (1600 * 1024)  # > etcd's default --max-request-bytes (1.5 MiB), < the client's 2 MiB cap

Step = tuple[tuple[str, ...], str | None]

# fmt: off
SEQUENCE: list[Step] = [
    # --- put ----------------------------------------------------------------------------------------
    (("put", "foo", "bar"), None),
    (("put", "--prev-kv", "foo", "baz"), None),
    (("put", "--prev-kv", "-w", "json", "foo", "qux"), None),
    (("put", "-w", "fields", "--prev-kv", "foo", "quux"), None),
    (("put", "-w", "json", "fresh", "1"), None),
    (("put", "spaced", "hello world  with  spaces"), None),
    (("put", "dash", "--", "-starts-with-dash"), None),
    (("put", "--", "-dashkey", "v"), None),
    (("put", "uni/ключ", "héllo ☃ 日本"), None),
    (("put", "empty", ""), None),
    (("put", "fromstdin"), "line one\nline two\n"),
    (("put", "--ignore-value", "foo"), None),
    (("put", "--ignore-value", "no-such-key"), None),              # error: key not found
    (("put", "--ignore-lease", "foo", "with-ignored-lease"), None),  # ok: foo has no lease
    (("put", "--ignore-lease", "no-such-key", "v"), None),         # error: key not found
    (("put", "--lease=1234abcd", "leased", "v"), None),            # error: lease not found
    (("put", "", "v"), None),                                      # error: key is not provided
    (("put", "big"), BIG_VALUE),                                   # error: request is too large
    (("put", "-w", "table", "t", "v"), None),                      # client-side: table unsupported
    # --- get ----------------------------------------------------------------------------------------
    (("get", "foo"), None),
    (("get", "foo", "-w", "json"), None),
    (("get", "foo", "-w", "fields"), None),
    (("get", "no-such-key"), None),
    (("get", "no-such-key", "-w", "json"), None),
    (("get", "empty", "-w", "json"), None),
    (("get", "uni/ключ"), None),
    (("get", "uni/ключ", "--hex"), None),
    (("get", "fromstdin", "-w", "json"), None),
    (("put", "a1", "v-a1"), None),
    (("put", "a2", "v-a2"), None),
    (("put", "a3", "v-a3"), None),
    (("put", "b1", "v-b1"), None),
    (("put", "a2", "v-a2-again"), None),
    (("put", "a2", "v-a2-third"), None),
    (("put", "c1", "0-lowest"), None),
    (("get", "--prefix", "a"), None),
    (("get", "--prefix", "a", "-w", "json"), None),
    (("get", "--prefix", "a", "--keys-only"), None),
    (("get", "--prefix", "a", "--print-value-only"), None),
    (("get", "a1", "b1"), None),                                   # range [a1, b1)
    (("get", "a", "c", "-w", "fields"), None),
    (("get", "--from-key", "b"), None),
    (("get", "--from-key", ""), None),
    (("get", "--prefix", ""), None),
    (("get", "--prefix", "a", "--limit", "2"), None),
    (("get", "--prefix", "a", "--limit", "2", "-w", "json"), None),  # "more": true, count 3
    (("get", "--from-key", "a", "--limit=1", "-w", "fields"), None),
    (("get", "--prefix", "", "--sort-by=KEY", "--order=DESCEND", "--keys-only"), None),
    (("get", "--prefix", "", "--order=DESCEND", "--limit=3"), None),
    (("get", "--prefix", "a", "--sort-by=VERSION", "--order=DESCEND"), None),
    (("get", "--prefix", "a", "--sort-by=VERSION", "--order=ASCEND", "-w", "json"), None),
    (("get", "--prefix", "a", "--sort-by=CREATE", "--order=DESCEND", "--keys-only"), None),
    (("get", "--prefix", "", "--sort-by=MODIFY", "--order=ASCEND", "--keys-only"), None),
    (("get", "--prefix", "", "--sort-by=MODIFY", "--order=DESCEND", "--limit=2", "-w", "json"), None),
    (("get", "--prefix", "", "--sort-by=VALUE", "--print-value-only"), None),
    (("get", "--prefix", "", "--sort-by=VALUE", "--order=DESCEND", "--limit=4", "--keys-only"), None),
    (("get", "--sort-by=BOGUS", "a"), None),                       # client-side error
    (("get", "--prefix", "a", "--consistency=s", "-w", "json"), None),
    (("get", "foo", "--consistency=s"), None),
    (("get", "--prefix", "", "--hex", "--keys-only", "--limit=2"), None),
    (("get", "--prefix", "a", "--hex", "-w", "fields"), None),
    # --- history: --rev -------------------------------------------------------------------------------
    (("get", "foo", "--rev=2"), None),
    (("get", "foo", "--rev=3", "-w", "json"), None),                # header revision is the current one
    (("get", "--prefix", "a", "--rev={rev-3}", "-w", "json"), None),
    (("get", "foo", "--rev=1"), None),                              # before foo existed
    (("get", "foo", "--rev=100000"), None),                         # error: future revision
    # --- delete ---------------------------------------------------------------------------------------
    (("del", "no-such-key"), None),
    (("del", "no-such-key", "-w", "json"), None),
    (("del", "--prev-kv", "spaced"), None),
    (("del", "--prev-kv", "-w", "json", "dash"), None),
    (("del", "a1", "a3"), None),                                    # range [a1, a3): a1, a2
    (("get", "--prefix", "a", "-w", "json"), None),
    (("get", "a2", "--rev={rev-1}", "-w", "json"), None),           # still visible before the delete
    (("put", "a2", "reborn"), None),
    (("get", "a2", "-w", "json"), None),                            # version 1, new create_revision
    (("del", "--prefix", "a", "--prev-kv", "-w", "fields"), None),
    (("del", "--from-key", "fresh", "--prev-kv"), None),
    (("get", "--prefix", "", "-w", "json"), None),
    # --- txn (non-interactive: compares, blank, success ops, blank, failure ops, blank) --------------
    (("put", "t/x", "10"), None),
    (("put", "t/y", "abc"), None),
    (("txn",), 'value("t/x") = "10"\n\nput t/x 11\nget t/x\n\nput t/x failed\n\n'),
    (("txn",), 'value("t/x") = "10"\n\nput t/x 12\n\nput t/fail yes\nget --prefix t/\n\n'),
    (("txn", "-w", "json"), 'value("t/y") != "zzz"\nvalue("t/y") < "b"\nvalue("t/y") > "a"\n\n'
                            'put --prev-kv t/y abd\nget --prefix --keys-only t/\ndel --prev-kv t/fail\n\n\n'),
    (("txn", "-w", "json"), 'version("t/x") = "2"\n\nput t/v2 yes\n\nput t/v2 no\n\n'),
    (("txn",), 'version("t/x") > "1"\nversion("t/x") < "3"\nversion("t/x") != "5"\n\nput t/ver ok\n\n\n'),
    (("txn", "-w", "json"), 'create("t/x") < "{rev}"\n\nget t/x\n\nget t/y\n\n'),
    (("txn",), 'mod("t/x") > "1"\ncreate("t/missing") = "0"\n\nput t/a 1\nput t/b 2\nget --prefix t/\n\n\n'),
    (("txn", "-w", "json"), 'mod("t/x") < "2"\n\nput t/nope 1\n\ndel --prefix t/\nget --prefix t/\n\n'),
    (("txn",), 'version("t/missing") = "0"\n\nput t/m 1\n\n\n'),
    (("txn",), 'value("t/missing") = ""\n\nput t/m2 1\n\nput t/m3 1\n\n'),  # value compare on absent key
    (("txn", "-w", "fields"), '\nget t/m\n\n\n'),                     # no compares: success branch
    (("txn", "-w", "json"), '\n\n\n'),                                # empty txn: no new revision
    (("txn",), '\nput t/dup 1\nput t/dup 2\n\n\n'),                   # error: duplicate key
    (("txn",), '\nput t/dup/x 1\ndel --prefix t/dup\n\n\n'),           # error: put inside deleted range
    (("txn",), '\nput t/same 1\n\nput t/same 2\n\n'),                # same key in both branches is fine
    (("txn",), TXN_TOO_MANY_OPS),                                     # error: > 128 ops
    (("txn",), 'bogus compare\n\n\n\n'),                              # client-side parse error
    (("get", "--prefix", "t/", "-w", "json"), None),
    # --- leases as seen through the KV API --------------------------------------------------------------
    (("lease", "grant", "600"), None),
    (("put", "--lease={lease0}", "leased/a", "1"), None),
    (("put", "--lease={lease0}", "leased/b", "2"), None),
    (("get", "leased/a", "-w", "json"), None),
    (("put", "--ignore-lease", "leased/a", "11"), None),
    (("get", "--prefix", "leased/", "-w", "fields"), None),
    (("put", "leased/a", "detached"), None),                          # a plain put detaches the lease
    (("get", "leased/a", "-w", "json"), None),
    (("lease", "revoke", "{lease0}"), None),
    (("get", "--prefix", "leased/", "-w", "json"), None),             # b deleted by the revoke
    # --- the lease service itself ---------------------------------------------------------------------
    (("lease", "grant", "1"), None),                                  # raised to the minimum TTL
    (("lease", "grant", "9000000001"), None),                         # error: too large lease TTL
    (("lease", "grant", "300"), None),
    (("lease", "keep-alive", "--once", "{lease2}"), None),
    (("lease", "keep-alive", "-w", "json", "--once", "{lease2}"), None),
    (("lease", "keep-alive", "--once", "{lease0}"), None),            # revoked: TTL 0
    (("lease", "keep-alive", "{lease0}"), None),                      # revoked: the stream ends at once
    (("lease", "timetolive", "{lease0}"), None),                      # revoked: already expired
    (("lease", "timetolive", "--keys", "{lease0}", "-w", "json"), None),
    (("lease", "revoke", "{lease0}"), None),                          # error: lease not found
    (("put", "--lease={lease2}", "svc/a", "up"), None),
    (("put", "--lease={lease2}", "svc/b", "up"), None),
    (("lease", "revoke", "{lease2}"), None),                          # both keys, one revision
    (("get", "--prefix", "svc/", "-w", "json"), None),
    (("lease", "revoke", "{lease1}"), None),                          # no keys: no new revision
    (("lease", "list"), None),
    (("lease", "list", "-w", "json"), None),
    (("get", "--prefix", "", "--keys-only", "-w", "json"), None),
    # --- compaction -----------------------------------------------------------------------------------
    (("put", "k/c", "1"), None),
    (("put", "k/c", "2"), None),
    (("put", "k/c", "3"), None),
    (("get", "k/c", "-w", "json"), None),
    (("compaction", "{rev-1}"), None),
    (("get", "k/c", "--rev={rev-2}"), None),                          # error: compacted
    (("get", "k/c", "--rev={rev-1}", "-w", "json"), None),            # the compaction revision is kept
    (("compaction", "{rev-2}"), None),                                # error: already compacted
    (("compaction", "{rev+100}"), None),                              # error: future revision
    (("put", "k/c", "4"), None),
    (("get", "k/c", "-w", "json"), None),
    (("compaction", "--physical", "{rev}"), None),
    (("get", "k/c", "--rev={rev-1}"), None),                          # error: compacted
    (("get", "--prefix", "k/", "-w", "json"), None),
    # --- misc -----------------------------------------------------------------------------------------
    (("endpoint", "health"), None),
    (("endpoint", "health", "-w", "json"), None),
    (("get", "--prefix", "", "--keys-only"), None),
]
# fmt: on

_HEADER_IDS = re.compile(
    r'("(?:cluster_id|member_id|raft_term)":)\d+|("(?:ClusterID|MemberID|RaftTerm)" : )\d+'
)
_VERSION_STR = re.compile(r'("(?:version|Version)" ?: ?)"\d+\.\d+\.\d+[^"]*"')
_TIMESTAMP = re.compile(r'"ts":"[^"]*"')
_CLIENT_ID = re.compile(r"client-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TOOK = re.compile(r'(took = |"took":")[0-9.]+(?:[µnm]?s|h|m)+')
_LEASE_GRANTED = re.compile(r"lease ([0-9a-f]+) granted")
_LEASE_GRANTED_JSON = re.compile(r'"ID":(\d+)')
_REVISION = re.compile(r'"revision":(\d+)|"Revision" : (\d+)')
_PLACEHOLDER = re.compile(r"\{(lease\d+|rev(?:[+-]\d+)?)\}")


@dataclass
class Outcome:
    """What one etcdctl invocation printed, raw and normalized."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Session:
    """Per-server state of a run: the leases it granted (ids differ per server) and its transcript."""

    server: Server
    leases: list[int] = field(default_factory=list)
    transcript: list[Outcome] = field(default_factory=list)

    def normalize(self, text: str) -> str:
        """Hide what may differ between two correct servers; keep everything else (revisions!) intact."""
        text = text.replace(self.server.endpoint, "<ENDPOINT>")
        text = _HEADER_IDS.sub(lambda m: (m.group(1) or m.group(2)) + "<ID>", text)
        text = _VERSION_STR.sub(lambda m: m.group(1) + '"<VERSION>"', text)
        text = _TIMESTAMP.sub('"ts":"<TS>"', text)
        text = _CLIENT_ID.sub("client-<UUID>", text)
        text = _TOOK.sub(lambda m: m.group(1) + "<DURATION>", text)
        for i, lease in enumerate(self.leases):
            text = re.sub(rf"\b(?:{lease:016x}|{lease:x}|{lease})\b", f"<LEASE{i}>", text)
        return text


def _expand(arg: str, session: Session, revision: int) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name.startswith("lease"):
            idx = int(name[5:])
            if idx >= len(session.leases):
                return "0"  # no such lease granted (e.g. the grant failed): let the server say so
            return f"{session.leases[idx]:x}"
        return str(revision + int(name[3:] or 0))

    return _PLACEHOLDER.sub(sub, arg)


def _learn(session: Session, stdout: str) -> None:
    """Record ids of leases this server just granted, so later steps and the normalizer can use them."""
    for m in _LEASE_GRANTED.finditer(stdout):
        session.leases.append(int(m.group(1), 16))
    if stdout.lstrip().startswith("{") and '"TTL"' in stdout:
        for m in _LEASE_GRANTED_JSON.finditer(stdout):
            session.leases.append(int(m.group(1)))


def _last_revision(stdout: str, current: int) -> int:
    found = [int(a or b) for a, b in _REVISION.findall(stdout)]
    return max(found) if found else current


def _describe(step: int, argv: tuple[str, ...], stdin: str | None, a: Outcome, b: Outcome) -> str:
    def show(label: str, o: Outcome) -> str:
        return f"  [{label}] exit={o.returncode}\n  stdout: {o.stdout!r}\n  stderr: {o.stderr!r}"

    shown_stdin = "" if stdin is None else f"\n  stdin: {stdin[:300]!r}{'...' if len(stdin) > 300 else ''}"
    return (
        f"step {step}: etcdctl {' '.join(argv)}{shown_stdin}\n{show('reference', a)}\n{show('candidate', b)}"
    )


def run_differential(
    reference: Server,
    candidate: Server,
    sequence: list[Step] = SEQUENCE,
    *,
    transcript_dir: Path | None = None,
    max_mismatches: int = 10,
) -> list[str]:
    """Run `sequence` against both servers step by step; return descriptions of the mismatching steps.

    Stops after `max_mismatches`, since a candidate that has diverged (or hangs, costing etcdctl's 5 s
    timeout per step) only produces noise after that.  Writes both normalized transcripts to
    `transcript_dir` when given, for side-by-side diffing.
    """
    ref, cand = Session(reference), Session(candidate)
    revision = 0
    mismatches: list[str] = []
    for step, (args, stdin) in enumerate(sequence):
        outcomes = []
        for session in (ref, cand):
            argv = tuple(_expand(a, session, revision) for a in args)
            stdin_text = "" if stdin is None else _expand(stdin, session, revision)
            result = session.server.etcdctl(*argv, input=stdin_text, check=False)
            _learn(session, result.stdout)
            outcome = Outcome(
                argv, result.returncode, session.normalize(result.stdout), session.normalize(result.stderr)
            )
            session.transcript.append(outcome)
            outcomes.append(outcome)
            if session is ref:
                revision = _last_revision(result.stdout, revision)
        a, b = outcomes
        if (a.returncode, a.stdout, a.stderr) != (b.returncode, b.stdout, b.stderr):
            mismatches.append(_describe(step, a.argv, stdin, a, b))
            if len(mismatches) >= max_mismatches:
                mismatches.append(f"(stopped after {max_mismatches} mismatches, at step {step})")
                break
    if transcript_dir is not None:
        for name, session in (("reference", ref), ("candidate", cand)):
            lines = []
            for i, o in enumerate(session.transcript):
                lines.append(f"### step {i}: etcdctl {' '.join(o.argv)}\n# exit {o.returncode}\n")
                lines.append(f"# stdout\n{o.stdout}\n# stderr\n{o.stderr}\n")
            (transcript_dir / f"{name}.{session.server.kind}.txt").write_text("".join(lines))
    return mismatches


def _assert_same(mismatches: list[str], transcript_dir: Path) -> None:
    if mismatches:
        pytest.fail(
            f"{len(mismatches)} etcdctl step(s) differ (normalized transcripts in {transcript_dir}):\n\n"
            + "\n\n".join(mismatches),
            pytrace=False,
        )


def test_sequence_is_big_enough() -> None:
    assert len(SEQUENCE) >= 60


def test_normalizer_hides_ids_but_not_revisions() -> None:
    """The normalizer must hide ids/terms/timings yet keep every revision, version and count visible."""
    session = Session(Server("etcd"), leases=[0x7C02A20D06220E5E])
    a = (
        '{"header":{"cluster_id":1,"member_id":2,"revision":7,"raft_term":3},"kvs":[{"key":"YQ==",'
        '"create_revision":5,"mod_revision":7,"version":2,"value":"MQ==","lease":8935882787477655134}],'
        '"count":1}'
    )
    b = a.replace('"cluster_id":1', '"cluster_id":99').replace('"raft_term":3', '"raft_term":4')
    assert session.normalize(a) == session.normalize(b)
    assert "<LEASE0>" in session.normalize(a)
    for field_ in ('"revision":7', '"mod_revision":7', '"create_revision":5', '"version":2', '"count":1'):
        changed = a.replace(field_, field_[:-1] + "9")
        assert session.normalize(changed) != session.normalize(a), field_
    took = "127.0.0.1:1 is healthy: successfully committed proposal: took = 1.2ms"
    assert session.normalize(took) == session.normalize(took.replace("1.2ms", "987.6µs"))


@pytest.mark.timeout(120)
def test_differential_detects_a_real_difference(etcd: Server, tmp_path: Path) -> None:
    """Guard against a too-loose normalizer: one extra write on one side must show up as a mismatch."""
    other = Server("etcd", tmp_path / "etcd-b").start()
    try:
        other.etcdctl("put", "extra", "write")
        sequence: list[Step] = [(("put", "x", "1"), None), (("get", "x", "-w", "json"), None)]
        mismatches = run_differential(etcd, other, sequence)
    finally:
        other.stop()
    assert len(mismatches) == 1 and '"revision":3' in mismatches[0], mismatches


@pytest.mark.timeout(300)
def test_differential_harness_self_check(etcd: Server, tmp_path: Path) -> None:
    """Two fresh real etcds must look identical after normalization: validates the normalizer itself."""
    other = Server("etcd", tmp_path / "etcd-b").start()
    try:
        mismatches = run_differential(etcd, other, transcript_dir=tmp_path)
    finally:
        other.stop()
    _assert_same(mismatches, tmp_path)


@pytest.mark.timeout(300)
def test_etcdctl_differential_etcd_vs_cairn(etcd: Server, cairn: Server, tmp_path: Path) -> None:
    """cairn must answer every etcdctl command exactly as etcd 3.4 does (modulo ids and timings)."""
    _assert_same(run_differential(etcd, cairn, transcript_dir=tmp_path), tmp_path)
