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
