"""A real Python etcd client (aetcd, on grpc.aio) used against cairn as an application would.

aetcd ships its own compiled etcd protos; they would collide with ours in protobuf's registry, so
the client runs in its own interpreter and reports what it saw as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from servers import Server

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    import aetcd

    async def main(port):
        out = {}
        async with aetcd.Client(host="127.0.0.1", port=port, timeout=10) as c:
            put = await c.put(b"/config/a", b"1")
            out["put_revision"] = put.header.revision
            got = await c.get(b"/config/a")
            out["get"] = [got.value.decode(), got.version, got.mod_revision]
            await c.put(b"/config/b", b"2")
            out["prefix"] = [kv.key.decode() for kv in await c.get_prefix(b"/config/")]
            ok, _ = await c.transaction(
                compare=[c.transactions.value(b"/config/a") == b"1"],
                success=[c.transactions.put(b"/config/a", b"swapped")],
                failure=[],
            )
            out["txn"] = ok
            out["after_txn"] = (await c.get(b"/config/a")).value.decode()
            lease = await c.lease(10)
            await c.put(b"/svc/x", b"up", lease=lease)
            out["lease_keys"] = [k.decode() for k in await lease.keys()]
            out["granted_ttl"] = await lease.granted_ttl()
            out["remaining_ttl"] = await lease.remaining_ttl()
            await lease.refresh()
            await lease.revoke()
            out["after_revoke"] = await c.get(b"/svc/x") is None
            deleted = await c.delete_prefix(b"/config/")
            out["deleted"] = deleted.deleted
            status = await c.status()
            out["version"] = status.version
        print(json.dumps(out))

    asyncio.run(main(int(sys.argv[1])))
    """
)


def test_aetcd_kv_txn_and_leases(cairn: Server) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(cairn.client_port)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["put_revision"] == 2
    assert seen["get"] == ["1", 1, 2]
    assert seen["prefix"] == ["/config/a", "/config/b"]
    assert seen["txn"] is True and seen["after_txn"] == "swapped"
    assert seen["lease_keys"] == ["/svc/x"]
    assert seen["granted_ttl"] == 10 and 8 <= seen["remaining_ttl"] <= 10
    assert seen["after_revoke"] is True
    assert seen["deleted"] == 2
    assert seen["version"].startswith("3.4")


WATCH_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    import aetcd
    from aetcd.rtypes import EventKind

    def seen(event, with_prev=False):
        kv = event.kv
        row = [event.kind, kv.key.decode(), kv.value.decode(), kv.mod_revision]
        if with_prev:
            row.append(event.prev_kv.value.decode() if event.prev_kv else None)
        return row

    async def collect(watch, last, with_prev=False):
        rows = []
        async for event in watch:
            rows.append(seen(event, with_prev))
            if (event.kind, event.kv.key, event.kv.value) == last:
                break
        await watch.cancel()
        return rows

    async def main(port, start_revision):
        async with aetcd.Client(host="127.0.0.1", port=port, timeout=10) as c:
            done = ("DELETE", b"/app/zz-done", b"")  # the last event each watch waits for
            watches = {
                "prefix": (await c.watch_prefix(b"/app/"), done),
                "key": (await c.watch(b"/app/one"), ("PUT", b"/app/one", b"bye")),
                "deletes_prev_kv": (
                    await c.watch_prefix(b"/app/", kind=EventKind.DELETE, prev_kv=True), done
                ),
                "history": (await c.watch_prefix(b"/app/", start_revision=start_revision), done),
            }
            print("READY", flush=True)  # every watch is created: the parent may write
            names = list(watches)
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(collect(w, last, with_prev=name == "deletes_prev_kv")
                      for name, (w, last) in watches.items())
                ),
                timeout=30,
            )
        print(json.dumps(dict(zip(names, results))))

    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
    """
)


def test_aetcd_watch_sees_etcdctl_writes_in_order(cairn: Server) -> None:
    def write(*argv: str, input: str | None = None) -> int:
        """Run an etcdctl write; return the revision it created."""
        out = cairn.etcdctl(*argv, "-w", "json", input=input).stdout
        return json.loads(out)["header"]["revision"]

    r0 = write("put", "/app/before", "0")
    proc = subprocess.Popen(
        [sys.executable, "-c", WATCH_SCRIPT, str(cairn.client_port), str(r0)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready.strip() == "READY", f"watcher did not start: {ready!r} {proc.stderr.read()}"
        r1 = write("put", "/app/one", "1")
        r2 = write("put", "/app/two", "2")
        write("put", "/other", "x")
        r4 = write("put", "/app/one", "1b")
        r5 = write("del", "/app/two")
        r6 = write("txn", input="\nput /app/three 3\nput /app/four 4\ndel /app/one\n\n\n")
        r7 = write("put", "/app/one", "again")
        r8 = write("put", "/app/sub/x", "y")
        r9 = write("put", "/app/sub/y", "z")
        r10 = write("del", "--prefix", "/app/sub/")
        r11 = write("put", "/app/one", "bye")
        r12 = write("put", "/app/zz-done", "1")
        r13 = write("del", "/app/zz-done")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    seen = json.loads(out)

    live = [
        ["PUT", "/app/one", "1", r1],
        ["PUT", "/app/two", "2", r2],
        ["PUT", "/app/one", "1b", r4],
        ["DELETE", "/app/two", "", r5],
        ["PUT", "/app/three", "3", r6],
        ["PUT", "/app/four", "4", r6],
        ["DELETE", "/app/one", "", r6],
        ["PUT", "/app/one", "again", r7],
        ["PUT", "/app/sub/x", "y", r8],
        ["PUT", "/app/sub/y", "z", r9],
        ["DELETE", "/app/sub/x", "", r10],
        ["DELETE", "/app/sub/y", "", r10],
        ["PUT", "/app/one", "bye", r11],
        ["PUT", "/app/zz-done", "1", r12],
        ["DELETE", "/app/zz-done", "", r13],
    ]
    assert seen["prefix"] == live
    assert seen["history"] == [["PUT", "/app/before", "0", r0], *live]
    assert seen["key"] == [e for e in live if e[1] == "/app/one"]
    assert seen["deletes_prev_kv"] == [
        ["DELETE", "/app/two", "", r5, "2"],
        ["DELETE", "/app/one", "", r6, "1b"],
        ["DELETE", "/app/sub/x", "", r10, "y"],
        ["DELETE", "/app/sub/y", "", r10, "z"],
        ["DELETE", "/app/zz-done", "", r13, "1"],
    ]
