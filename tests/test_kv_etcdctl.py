"""etcdctl 3.4 drives cairn's KV, maintenance and cluster APIs, flag by flag, with concrete outputs checked.

One cairn serves the whole module (starting a node costs seconds); every test works under its own key
prefix and computes the revisions it expects from the store revision it finds when it begins, so the
tests do not depend on each other's data.  Compaction only ever compacts revisions the compacting test
wrote itself, and later tests only read revisions they wrote, so compaction does not leak either.

The expected outputs are etcd 3.4's: set CAIRN_KV_ETCDCTL_AGAINST=etcd to run this module against a real
etcd and check the expectations themselves.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator

import pytest
from servers import Server

KIND = os.environ.get("CAIRN_KV_ETCDCTL_AGAINST", "cairn")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(KIND, tmp_path_factory.mktemp(f"kv-etcdctl-{KIND}"), ready_timeout=60.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- helpers ---------------------------------------------------------------------------------------------
def ctl(node: Server, *args: str, input: str | None = None) -> str:
    """etcdctl's stdout; the command must succeed."""
    return node.etcdctl(*args, input=input, timeout=60).stdout


def ctl_fail(node: Server, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    """Run a command that must fail; returns the completed process for its stderr."""
    result = node.etcdctl(*args, input=input, check=False, timeout=60)
    assert result.returncode != 0, f"etcdctl {args} unexpectedly succeeded: {result.stdout!r}"
    return result


def ctl_json(node: Server, *args: str, input: str | None = None) -> dict:
    return json.loads(ctl(node, *args, "-w", "json", input=input))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def revision(node: Server) -> int:
    """The store's current revision, from the header of a read of a key nobody writes."""
    return int(ctl_json(node, "get", "__nobody_writes_this__")["header"]["revision"])


def kvs(resp: dict) -> list[tuple[str, str, int, int, int]]:
    """(key, value, create_revision, mod_revision, version) of each kv of a json range response."""
    return [
        (
            unb64(kv["key"]),
            unb64(kv.get("value", "")),
            int(kv.get("create_revision", 0)),
            int(kv.get("mod_revision", 0)),
            int(kv.get("version", 0)),
        )
        for kv in resp.get("kvs", [])
    ]


def lines(*items: str) -> str:
    return "".join(f"{item}\n" for item in items)


# -- put -------------------------------------------------------------------------------------------------
def test_put_then_get_revisions_and_versions(node: Server) -> None:
    base = revision(node)
    assert ctl(node, "put", "put/a", "one") == "OK\n"
    assert ctl(node, "put", "put/a", "two") == "OK\n"
    assert ctl(node, "put", "put/b", "bee") == "OK\n"
    resp = ctl_json(node, "get", "put/a")
    assert int(resp["header"]["revision"]) == base + 3
    assert kvs(resp) == [("put/a", "two", base + 1, base + 2, 2)]
    assert int(resp["count"]) == 1
    assert kvs(ctl_json(node, "get", "put/b")) == [("put/b", "bee", base + 3, base + 3, 1)]
    assert ctl(node, "get", "put/a") == "put/a\ntwo\n"
    assert ctl(node, "get", "put/missing") == ""
    missing = ctl_json(node, "get", "put/missing")
    assert "kvs" not in missing and int(missing.get("count", 0)) == 0


def test_put_json_header_and_fields(node: Server) -> None:
    base = revision(node)
    resp = ctl_json(node, "put", "putj/a", "v")
    assert int(resp["header"]["revision"]) == base + 1
    assert "prev_kv" not in resp
    out = ctl(node, "put", "-w", "fields", "--prev-kv", "putj/a", "w")
    assert f'"Revision" : {base + 2}\n' in out
    assert (
        '"PrevKey" : "putj/a"\n'
        f'"PrevCreateRevision" : {base + 1}\n'
        f'"PrevModRevision" : {base + 1}\n'
        '"PrevVersion" : 1\n'
        '"PrevValue" : "v"\n'
        '"PrevLease" : 0\n'
    ) in out


def test_put_prev_kv(node: Server) -> None:
    base = revision(node)
    assert ctl(node, "put", "--prev-kv", "prev/a", "first") == "OK\n"  # nothing before: no prev kv
    assert ctl(node, "put", "--prev-kv", "prev/a", "second") == "OK\nprev/a\nfirst\n"
    resp = ctl_json(node, "put", "--prev-kv", "prev/a", "third")
    assert int(resp["header"]["revision"]) == base + 3
    prev = resp["prev_kv"]
    assert unb64(prev["key"]) == "prev/a" and unb64(prev["value"]) == "second"
    assert int(prev["create_revision"]) == base + 1
    assert int(prev["mod_revision"]) == base + 2
    assert int(prev["version"]) == 2
    assert kvs(ctl_json(node, "get", "prev/a")) == [("prev/a", "third", base + 1, base + 3, 3)]


def test_put_ignore_value(node: Server) -> None:
    base = revision(node)
    ctl(node, "put", "ign/a", "kept")
    assert ctl(node, "put", "--ignore-value", "ign/a") == "OK\n"
    assert kvs(ctl_json(node, "get", "ign/a")) == [("ign/a", "kept", base + 1, base + 2, 2)]
    assert ctl(node, "put", "--ignore-value", "--prev-kv", "ign/a") == "OK\nign/a\nkept\n"
    failed = ctl_fail(node, "put", "--ignore-value", "ign/missing")
    assert "Error: etcdserver: key not found" in failed.stderr
    assert revision(node) == base + 3  # the failed put wrote nothing
    assert ctl(node, "get", "--prefix", "ign/", "--keys-only") == "ign/a\n\n"


def test_put_value_forms(node: Server) -> None:
    ctl(node, "put", "form/stdin", input="line one\nline two\n")
    ctl(node, "put", "form/dash", "--", "-starts-with-dash")
    ctl(node, "put", "form/empty", "")
    ctl(node, "put", "form/uni", "héllo ☃ 日本")
    assert unb64(ctl_json(node, "get", "form/stdin")["kvs"][0]["value"]) == "line one\nline two\n"
    assert ctl(node, "get", "form/dash", "--print-value-only") == "-starts-with-dash\n"
    empty = ctl_json(node, "get", "form/empty")
    assert int(empty["count"]) == 1 and empty["kvs"][0].get("value", "") == ""
    assert ctl(node, "get", "form/uni", "--print-value-only") == "héllo ☃ 日本\n"


# -- get -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def range_data(node: Server) -> dict[str, tuple[int, int]]:
    """Keys under r/ written in a known order; maps key -> (create_revision, mod_revision)."""
    base = revision(node)
    # key, value: values sort in a different order than keys, versions differ per key
    writes = [
        ("r/b", "3-bee"),
        ("r/a", "2-ay"),
        ("r/c", "1-cee"),
        ("r/a", "4-ay-again"),
        ("r/d", "0-dee"),
        ("r/a", "5-ay-third"),
        ("r/b", "6-bee-again"),
        ("s/after", "x"),
    ]
    for key, value in writes:
        ctl(node, "put", key, value)
    revs: dict[str, tuple[int, int]] = {}
    for i, (key, _value) in enumerate(writes, start=1):
        create = revs.get(key, (base + i, 0))[0]
        revs[key] = (create, base + i)
    revs["__base__"] = (base, base)
    return revs


def test_get_prefix_keys_only_and_values_only(node: Server, range_data: dict) -> None:
    assert ctl(node, "get", "--prefix", "r/") == lines(
        "r/a", "5-ay-third", "r/b", "6-bee-again", "r/c", "1-cee", "r/d", "0-dee"
    )
    assert ctl(node, "get", "--prefix", "r/", "--keys-only") == "r/a\n\nr/b\n\nr/c\n\nr/d\n\n"
    assert ctl(node, "get", "--prefix", "r/", "--print-value-only") == lines(
        "5-ay-third", "6-bee-again", "1-cee", "0-dee"
    )
    resp = ctl_json(node, "get", "--prefix", "r/", "--keys-only")
    assert [unb64(kv["key"]) for kv in resp["kvs"]] == ["r/a", "r/b", "r/c", "r/d"]
    assert all("value" not in kv for kv in resp["kvs"])
    assert int(resp["count"]) == 4
    resp = ctl_json(node, "get", "--prefix", "r/")
    assert [(k, v, c, m, ver) for k, v, c, m, ver in kvs(resp)] == [
        ("r/a", "5-ay-third", *range_data["r/a"], 3),
        ("r/b", "6-bee-again", *range_data["r/b"], 2),
        ("r/c", "1-cee", *range_data["r/c"], 1),
        ("r/d", "0-dee", *range_data["r/d"], 1),
    ]


def test_get_range_and_from_key(node: Server, range_data: dict) -> None:
    assert ctl(node, "get", "r/b", "r/d", "--keys-only") == "r/b\n\nr/c\n\n"  # [r/b, r/d)
    # --from-key reaches the end of the keyspace: use keys that sort after every other test's ('~' is 0x7e)
    for key in ("~g/a", "~g/b", "~g/c"):
        ctl(node, "put", key, key[-1])
    assert ctl(node, "get", "--from-key", "~g/b", "--keys-only") == "~g/b\n\n~g/c\n\n"
    resp = ctl_json(node, "get", "--from-key", "~g/")
    assert [(k, v) for k, v, *_ in kvs(resp)] == [("~g/a", "a"), ("~g/b", "b"), ("~g/c", "c")]
    assert int(resp["count"]) == 3
    # from-key with a limit: the first keys, more set, count of the whole range
    resp = ctl_json(node, "get", "--from-key", "~g/", "--limit", "1")
    assert [k for k, *_ in kvs(resp)] == ["~g/a"] and resp.get("more") is True and int(resp["count"]) == 3
    assert ctl(node, "del", "--prefix", "~g/") == "3\n"


def test_get_limit(node: Server, range_data: dict) -> None:
    assert ctl(node, "get", "--prefix", "r/", "--limit", "2", "--keys-only") == "r/a\n\nr/b\n\n"
    resp = ctl_json(node, "get", "--prefix", "r/", "--limit", "2")
    assert len(resp["kvs"]) == 2
    assert resp.get("more") is True
    assert int(resp["count"]) == 4  # count is the whole range, not the page
    resp = ctl_json(node, "get", "--prefix", "r/", "--limit", "4")
    assert len(resp["kvs"]) == 4 and not resp.get("more", False)
    out = ctl(node, "get", "--prefix", "r/", "--limit", "1", "-w", "fields")
    assert '"Key" : "r/a"\n' in out and '"More" : true\n' in out and '"Count" : 4\n' in out


@pytest.mark.parametrize(
    ("sort_by", "order", "expected"),
    [
        ("KEY", "DESCEND", ["r/d", "r/c", "r/b", "r/a"]),
        ("KEY", "ASCEND", ["r/a", "r/b", "r/c", "r/d"]),
        ("VALUE", "ASCEND", ["r/d", "r/c", "r/a", "r/b"]),
        ("VALUE", "DESCEND", ["r/b", "r/a", "r/c", "r/d"]),
        ("VALUE", None, ["r/d", "r/c", "r/a", "r/b"]),  # a non-key target without --order ascends
        ("VERSION", "DESCEND", ["r/a", "r/b"]),  # versions 3, 2, then r/c and r/d tie at 1
        ("CREATE", "ASCEND", ["r/b", "r/a", "r/c", "r/d"]),
        ("CREATE", "DESCEND", ["r/d", "r/c", "r/a", "r/b"]),
        ("MODIFY", "ASCEND", ["r/c", "r/d", "r/a", "r/b"]),
        ("MODIFY", "DESCEND", ["r/b", "r/a", "r/d", "r/c"]),
        (None, "DESCEND", ["r/d", "r/c", "r/b", "r/a"]),  # --order alone sorts by key
    ],
)
def test_get_sort(node: Server, range_data: dict, sort_by: str | None, order: str | None, expected) -> None:
    args = ["get", "--prefix", "r/", "--keys-only"]
    if sort_by:
        args.append(f"--sort-by={sort_by}")
    if order:
        args.append(f"--order={order}")
    keys = [k for k in ctl(node, *args).split("\n") if k]
    assert keys[: len(expected)] == expected
    assert sorted(keys) == ["r/a", "r/b", "r/c", "r/d"]


def test_get_sort_with_limit_sorts_the_whole_range_first(node: Server, range_data: dict) -> None:
    resp = ctl_json(node, "get", "--prefix", "r/", "--sort-by=VALUE", "--order=DESCEND", "--limit", "2")
    assert [k for k, *_ in kvs(resp)] == ["r/b", "r/a"]
    assert resp.get("more") is True and int(resp["count"]) == 4
    resp = ctl_json(node, "get", "--prefix", "r/", "--sort-by=MODIFY", "--order=ASCEND", "--limit", "1")
    assert [k for k, *_ in kvs(resp)] == ["r/c"]


def test_get_rev(node: Server, range_data: dict) -> None:
    create_a, mod_a = range_data["r/a"]
    # r/a was written at create_a ("2-ay"), create_a + 2 ("4-ay-again"), mod_a ("5-ay-third")
    assert ctl(node, "get", "r/a", f"--rev={create_a}", "--print-value-only") == "2-ay\n"
    assert ctl(node, "get", "r/a", f"--rev={create_a + 1}", "--print-value-only") == "2-ay\n"
    assert ctl(node, "get", "r/a", f"--rev={create_a + 2}", "--print-value-only") == "4-ay-again\n"
    assert ctl(node, "get", "r/a", f"--rev={mod_a}", "--print-value-only") == "5-ay-third\n"
    assert ctl(node, "get", "r/a", f"--rev={create_a - 1}") == ""  # before it existed
    resp = ctl_json(node, "get", "r/a", f"--rev={create_a + 2}")
    assert kvs(resp) == [("r/a", "4-ay-again", create_a, create_a + 2, 2)]
    assert int(resp["header"]["revision"]) >= mod_a  # the header carries the current revision
    base = range_data["__base__"][0]
    old = ctl_json(node, "get", "--prefix", "r/", f"--rev={base + 3}")
    assert [(k, v) for k, v, *_ in kvs(old)] == [("r/a", "2-ay"), ("r/b", "3-bee"), ("r/c", "1-cee")]
    assert int(old["count"]) == 3
    future = ctl_fail(node, "get", "r/a", f"--rev={revision(node) + 1000}")
    assert "Error: etcdserver: mvcc: required revision is a future revision" in future.stderr


def test_get_serializable_and_fields(node: Server, range_data: dict) -> None:
    create_d, mod_d = range_data["r/d"]
    assert ctl(node, "get", "r/d", "--consistency=s") == "r/d\n0-dee\n"
    assert (
        ctl(node, "get", "--prefix", "r/", "--consistency=s", "--keys-only") == "r/a\n\nr/b\n\nr/c\n\nr/d\n\n"
    )
    out = ctl(node, "get", "r/d", "--consistency=s", "-w", "fields")
    assert (
        '"Key" : "r/d"\n'
        f'"CreateRevision" : {create_d}\n'
        f'"ModRevision" : {mod_d}\n'
        '"Version" : 1\n'
        '"Value" : "0-dee"\n'
        '"Lease" : 0\n'
        '"More" : false\n'
        '"Count" : 1\n'
    ) in out
    assert f'"Revision" : {revision(node)}\n' in out


def test_get_hex(node: Server) -> None:
    ctl(node, "put", "hex/k", "AZ")
    # hex/k = 68 65 78 2f 6b
    assert ctl(node, "get", "hex/k", "--hex") == "\\x68\\x65\\x78\\x2f\\x6b\n\\x41\\x5a\n"
    assert ctl(node, "get", "hex/k", "--hex", "--print-value-only") == "\\x41\\x5a\n"
    assert (
        ctl(node, "put", "--hex", "--prev-kv", "hex/k", "B") == "OK\n\\x68\\x65\\x78\\x2f\\x6b\n\\x41\\x5a\n"
    )


# -- del -------------------------------------------------------------------------------------------------
def test_del_single_missing_and_prev_kv(node: Server) -> None:
    base = revision(node)
    ctl(node, "put", "del/a", "1")
    ctl(node, "put", "del/b", "2")
    assert ctl(node, "del", "del/a") == "1\n"
    assert revision(node) == base + 3
    assert ctl(node, "del", "del/a") == "0\n"  # already gone: no new revision
    assert revision(node) == base + 3
    assert ctl(node, "del", "--prev-kv", "del/b") == "1\ndel/b\n2\n"
    resp = ctl_json(node, "del", "--prev-kv", "del/b")
    assert int(resp.get("deleted", 0)) == 0 and "prev_kvs" not in resp
    assert int(resp["header"]["revision"]) == base + 4
    # re-created after a delete: a new life, version starts over
    ctl(node, "put", "del/a", "again")
    assert kvs(ctl_json(node, "get", "del/a")) == [("del/a", "again", base + 5, base + 5, 1)]
    # the old life is still readable at an older revision
    assert ctl(node, "get", "del/a", f"--rev={base + 2}", "--print-value-only") == "1\n"
    assert ctl(node, "get", "del/a", f"--rev={base + 3}") == ""


def test_del_prefix_range_and_from_key(node: Server) -> None:
    for key in ("dp/a", "dp/b", "dp/c", "dp/d", "dp/e", "dpz/x"):
        ctl(node, "put", key, key.upper())
    base = revision(node)
    resp = ctl_json(node, "del", "--prev-kv", "dp/a", "dp/c")  # [dp/a, dp/c)
    assert int(resp["deleted"]) == 2
    assert [(unb64(kv["key"]), unb64(kv["value"])) for kv in resp["prev_kvs"]] == [
        ("dp/a", "DP/A"),
        ("dp/b", "DP/B"),
    ]
    assert int(resp["header"]["revision"]) == base + 1  # one revision for the whole range
    assert ctl(node, "del", "--prefix", "dp/") == "3\n"
    assert revision(node) == base + 2
    assert ctl(node, "get", "--prefix", "dp") == "dpz/x\nDPZ/X\n"
    # --from-key reaches the end of the keyspace: use keys that sort after every other test's
    ctl(node, "put", "~~dq/1", "a")
    ctl(node, "put", "~~dq/2", "b")
    ctl(node, "put", "~~dq/3", "c")
    assert ctl(node, "del", "--from-key", "~~dq/2") == "2\n"
    assert ctl(node, "get", "--prefix", "~~dq/", "--keys-only") == "~~dq/1\n\n"
    assert ctl(node, "del", "--prefix", "--prev-kv", "~~dq/") == "1\n~~dq/1\na\n"


# -- txn -------------------------------------------------------------------------------------------------
def test_txn_from_stdin_success_and_failure(node: Server) -> None:
    base = revision(node)
    ctl(node, "put", "txn/k", "v1")
    ctl(node, "put", "txn/other", "o")
    script = lines(
        'value("txn/k") = "v1"',
        'version("txn/k") = "1"',
        f'create("txn/k") = "{base + 1}"',
        f'mod("txn/other") > "{base}"',
        "",
        "put txn/k v2",
        "get txn/k",
        "del txn/other",
        "",
        "put txn/k failed",
        "",
    )
    assert ctl(node, "txn", input=script) == "SUCCESS\n\nOK\n\ntxn/k\nv2\n\n1\n"
    assert revision(node) == base + 3  # the whole txn is one revision
    assert kvs(ctl_json(node, "get", "txn/k")) == [("txn/k", "v2", base + 1, base + 3, 2)]
    assert ctl(node, "get", "txn/other") == ""
    # the same compares fail now: the else branch runs
    assert ctl(node, "txn", input=script) == "FAILURE\n\nOK\n"
    assert kvs(ctl_json(node, "get", "txn/k")) == [("txn/k", "failed", base + 1, base + 4, 3)]


def test_txn_json_and_range_flags(node: Server) -> None:
    base = revision(node)
    for key in ("tj/a", "tj/b", "tj/c"):
        ctl(node, "put", key, key[-1])
    script = lines(
        'value("tj/a") != "zzz"',
        "",
        "get tj/ --prefix --limit=2",
        "put tj/d d --prev-kv",
        "get tj/ --prefix --keys-only --sort-by=KEY --order=DESCEND",
        "",
        "",
    )
    resp = ctl_json(node, "txn", input=script)
    assert resp["succeeded"] is True
    assert int(resp["header"]["revision"]) == base + 4
    first, put, second = (r["Response"] for r in resp["responses"])
    assert [unb64(kv["key"]) for kv in first["ResponseRange"]["kvs"]] == ["tj/a", "tj/b"]
    assert first["ResponseRange"]["more"] is True and int(first["ResponseRange"]["count"]) == 3
    assert int(put["ResponsePut"]["header"]["revision"]) == base + 4
    assert "prev_kv" not in put["ResponsePut"]
    assert [unb64(kv["key"]) for kv in second["ResponseRange"]["kvs"]] == ["tj/d", "tj/c", "tj/b", "tj/a"]
    # a txn that only reads does not bump the revision; an empty failure branch succeeds with nothing
    resp = ctl_json(node, "txn", input=lines('version("tj/a") > "5"', "", "put tj/x never", "", ""))
    assert resp.get("succeeded", False) is False and "responses" not in resp
    assert revision(node) == base + 4
    out = ctl(node, "txn", "-w", "fields", input=lines("", "get tj/a", "", ""))
    assert '"Succeeded" : true\n' in out and '"Key" : "tj/a"\n' in out and '"Value" : "a"\n' in out


def test_txn_interactive(node: Server) -> None:
    """`txn -i` as a user types it: prompts for each section, answers line by line, an empty line ends one."""
    base = revision(node)
    ctl(node, "put", "txi/k", "start")
    typed = lines(
        'val("txi/k") = "start"',
        'ver("txi/k") = "1"',
        "",
        "put txi/k changed",
        "put txi/n new",
        "get txi/ --prefix",
        "",
        "put txi/k nope",
        "",
    )
    out = ctl(node, "txn", "-i", input=typed)
    assert out == (
        "compares:\n"
        "success requests (get, put, del):\n"
        "failure requests (get, put, del):\n"
        "SUCCESS\n\nOK\n\nOK\n\ntxi/k\nchanged\ntxi/n\nnew\n"
    )
    assert revision(node) == base + 2
    assert kvs(ctl_json(node, "get", "txi/n")) == [("txi/n", "new", base + 2, base + 2, 1)]
    out = ctl(node, "txn", "-i", input=typed)
    assert out.endswith("failure requests (get, put, del):\nFAILURE\n\nOK\n")
    assert ctl(node, "get", "txi/k", "--print-value-only") == "nope\n"
    assert revision(node) == base + 3
    # a malformed compare is rejected by etcdctl before anything is sent
    bad = ctl_fail(node, "txn", "-i", input=lines("this is not a compare", "", "", ""))
    assert "malformed comparison" in bad.stderr
    assert revision(node) == base + 3


def test_txn_with_put_of_same_key_twice_is_rejected(node: Server) -> None:
    base = revision(node)
    failed = ctl_fail(node, "txn", input=lines("", "put txd/k 1", "put txd/k 2", "", ""))
    assert "Error: etcdserver: duplicate key given in txn request" in failed.stderr
    assert revision(node) == base


# -- compaction ------------------------------------------------------------------------------------------
def test_compaction(node: Server) -> None:
    base = revision(node)
    for value in ("c1", "c2", "c3", "c4"):
        ctl(node, "put", "cmp/k", value)
    assert ctl(node, "compaction", str(base + 2)) == f"compacted revision {base + 2}\n"
    old = ctl_fail(node, "get", "cmp/k", f"--rev={base + 1}")
    assert "Error: etcdserver: mvcc: required revision has been compacted" in old.stderr
    # the compaction revision itself stays readable
    assert ctl(node, "get", "cmp/k", f"--rev={base + 2}", "--print-value-only") == "c2\n"
    again = ctl_fail(node, "compaction", str(base + 1))
    assert "Error: etcdserver: mvcc: required revision has been compacted" in again.stderr
    future = ctl_fail(node, "compaction", str(base + 100))
    assert "Error: etcdserver: mvcc: required revision is a future revision" in future.stderr
    assert ctl(node, "compaction", "--physical", str(base + 3)) == f"compacted revision {base + 3}\n"
    old = ctl_fail(node, "get", "cmp/k", f"--rev={base + 2}")
    assert "required revision has been compacted" in old.stderr
    assert ctl(node, "get", "cmp/k", f"--rev={base + 3}", "--print-value-only") == "c3\n"
    # compaction keeps the latest version of every key, and writes no revision of its own
    assert kvs(ctl_json(node, "get", "cmp/k")) == [("cmp/k", "c4", base + 1, base + 4, 4)]
    assert revision(node) == base + 4
    ctl(node, "put", "cmp/k", "c5")
    assert revision(node) == base + 5
    # a compacted history of a deleted key: still deleted, the revision keeps counting
    ctl(node, "del", "cmp/k")
    assert ctl(node, "compaction", "--physical", str(base + 6)) == f"compacted revision {base + 6}\n"
    assert ctl(node, "get", "cmp/k") == ""
    ctl(node, "put", "cmp/k", "reborn")
    assert kvs(ctl_json(node, "get", "cmp/k")) == [("cmp/k", "reborn", base + 7, base + 7, 1)]


# -- maintenance and cluster -----------------------------------------------------------------------------
def test_endpoint_status_json(node: Server) -> None:
    ctl(node, "put", "status/k", "v")
    current = revision(node)
    [status] = ctl_json(node, "endpoint", "status")
    assert status["Endpoint"] == node.endpoint
    body = status["Status"]
    header = body["header"]
    assert int(header["revision"]) == current
    assert int(header["member_id"]) != 0 and int(header["cluster_id"]) != 0
    assert int(body["leader"]) == int(header["member_id"])  # a single member leads itself
    assert int(body["raftTerm"]) >= 1 and int(header["raft_term"]) == int(body["raftTerm"])
    assert int(body["raftIndex"]) >= current - 1  # every write so far went through the log
    assert int(body.get("raftAppliedIndex", 0)) == int(body["raftIndex"])
    assert body["version"].startswith("3.")
    assert int(body["dbSize"]) > 0
    assert 0 < int(body.get("dbSizeInUse", body["dbSize"])) <= int(body["dbSize"])
    assert not body.get("errors") and not body.get("isLearner", False)


def test_endpoint_status_table(node: Server) -> None:
    [status] = ctl_json(node, "endpoint", "status")
    member_hex = format(int(status["Status"]["header"]["member_id"]), "x")
    out = ctl(node, "endpoint", "status", "-w", "table")
    rows = [
        [c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("|")
    ]
    assert rows[0] == [
        "ENDPOINT", "ID", "VERSION", "DB SIZE", "IS LEADER", "IS LEARNER",
        "RAFT TERM", "RAFT INDEX", "RAFT APPLIED INDEX", "ERRORS",
    ]  # fmt: skip
    assert len(rows) == 2
    row = dict(zip(rows[0], rows[1], strict=True))
    assert row["ENDPOINT"] == node.endpoint
    assert row["ID"] == member_hex
    assert row["IS LEADER"] == "true" and row["IS LEARNER"] == "false"
    assert row["ERRORS"] == ""
    assert int(row["RAFT INDEX"]) >= int(status["Status"]["raftIndex"])


def test_endpoint_health(node: Server) -> None:
    result = node.etcdctl("endpoint", "health", timeout=60)
    out = result.stdout + result.stderr  # etcdctl 3.4 prints the verdict on stderr
    assert f"{node.endpoint} is healthy: successfully committed proposal: took = " in out
    [health] = ctl_json(node, "endpoint", "health")
    assert health["endpoint"] == node.endpoint and health["health"] is True and not health.get("error")
    table = ctl(node, "endpoint", "health", "-w", "table")
    assert f"| {node.endpoint} |   true |" in table


def test_member_list(node: Server) -> None:
    resp = ctl_json(node, "member", "list")
    [member] = resp["members"]
    member_id = int(member["ID"])
    assert member_id == int(resp["header"]["member_id"])
    assert member["name"] == node.name
    assert member["peerURLs"] == [node.peer_url]
    assert member["clientURLs"] == [node.client_url]
    assert not member.get("isLearner", False)
    [status] = ctl_json(node, "endpoint", "status")
    assert int(status["Status"]["header"]["member_id"]) == member_id
    assert int(status["Status"]["header"]["cluster_id"]) == int(resp["header"]["cluster_id"])
    assert ctl(node, "member", "list") == (
        f"{member_id:x}, started, {node.name}, {node.peer_url}, {node.client_url}, false\n"
    )


def test_member_list_header_has_no_revision(node: Server) -> None:
    """etcd's Cluster service fills cluster_id, member_id and raft_term only: no revision in its header."""
    ctl(node, "put", "ml/k", "v")  # so a wrongly filled revision could not hide as a zero
    header = ctl_json(node, "member", "list")["header"]
    assert sorted(header) == ["cluster_id", "member_id", "raft_term"]
