"""The RESP frontend driven by real Redis clients (redis-py, redis-cli) against a real cairn node."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from servers import Server, free_port

REDIS_CLI = "/usr/bin/redis-cli"


def start_node(base: Path) -> tuple[Server, int]:
    port = free_port()
    plugins = json.dumps({"grpc": {}, "resp": {"listen": f"127.0.0.1:{port}"}})
    server = Server("cairn", base, env={"ETCD_PLUGINS": plugins}, ready_timeout=60.0).start()
    deadline = time.monotonic() + 30
    while True:  # the gRPC port answers first; the RESP listener comes up in the same process
        try:
            redis.Redis(port=port, socket_timeout=5).ping()
            return server, port
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int]]:
    server, port = start_node(tmp_path_factory.mktemp("resp") / "cairn")
    try:
        yield server, port
    finally:
        server.stop()


@pytest.fixture
def r(node: tuple[Server, int]) -> Iterator[redis.Redis]:
    client = redis.Redis(port=node[1], socket_timeout=20)
    yield client
    client.close()


def cli(port: int, *args: str, input: str | None = None, resp3: bool = False) -> str:
    argv = [REDIS_CLI, "-p", str(port), *(["-3"] if resp3 else []), *args]
    return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=30, check=True).stdout


def string_script(r: redis.Redis | redis.client.Pipeline, p: str) -> list:
    """Every string command once; run on a client or a pipeline, the results must be the same."""
    out = [
        r.set(f"{p}a", "1"),
        r.get(f"{p}a"),
        r.set(f"{p}a", "2", nx=True),
        r.set(f"{p}b", "x", xx=True),
        r.set(f"{p}a", "3", xx=True, get=True),
        r.set(f"{p}n", "v", nx=True, get=True),
        r.setnx(f"{p}n", "w"),
        r.getset(f"{p}n", "w"),
        r.mset({f"{p}m1": "a", f"{p}m2": "b"}),
        r.msetnx({f"{p}m1": "c", f"{p}m3": "d"}),
        r.mget(f"{p}m1", f"{p}m2", f"{p}m3"),
        r.exists(f"{p}m1", f"{p}m2", f"{p}m1", f"{p}zz"),
        r.incr(f"{p}c"),
        r.incrby(f"{p}c", 41),
        r.decr(f"{p}c"),
        r.decrby(f"{p}c", 2),
        r.append(f"{p}s", "ab"),
        r.append(f"{p}s", "cd"),
        r.strlen(f"{p}s"),
        r.getdel(f"{p}s"),
        r.delete(f"{p}m1", f"{p}m2", f"{p}m2", f"{p}zz"),
        r.type(f"{p}a"),
        r.type(f"{p}zz"),
        r.ttl(f"{p}a"),
        r.ttl(f"{p}zz"),
        r.expire(f"{p}a", 100),
        r.expire(f"{p}zz", 100),
        r.persist(f"{p}a"),
        r.persist(f"{p}a"),
        r.ttl(f"{p}a"),
        r.echo("hi"),
        r.ping(),
    ]
    return out


EXPECTED = [
    True, b"1", None, None, b"1", None, False, b"v", True, False, [b"a", b"b", None], 3,
    1, 42, 41, 39, 2, 4, 4, b"abcd", 2, b"string", b"none", -1, -2, True, False, True, False, -1,
    b"hi", True,
]  # fmt: skip


def test_string_commands(r: redis.Redis) -> None:
    assert string_script(r, "plain/") == EXPECTED


def test_string_commands_pipelined(r: redis.Redis) -> None:
    pipe = r.pipeline(transaction=False)
    string_script(pipe, "piped/")
    assert pipe.execute() == EXPECTED


def test_string_commands_in_multi_exec(r: redis.Redis) -> None:
    pipe = r.pipeline(transaction=True)
    string_script(pipe, "multi/")
    assert pipe.execute() == EXPECTED


def test_errors_have_redis_forms(node: tuple[Server, int], r: redis.Redis) -> None:
    r.set("word", "abc")
    with pytest.raises(redis.ResponseError, match=r"^value is not an integer or out of range$"):
        r.incr("word")
    r.set("big", str(2**63 - 1))
    with pytest.raises(redis.ResponseError, match=r"^increment or decrement would overflow$"):
        r.incr("big")
    with pytest.raises(redis.ResponseError, match=r"^syntax error$"):
        r.execute_command("SET", "k", "v", "NX", "XX")
    with pytest.raises(redis.ResponseError, match=r"^invalid expire time in 'set' command$"):
        r.execute_command("SET", "k", "v", "EX", "0")
    with pytest.raises(redis.ResponseError, match=r"^DB index is out of range$"):
        r.select(1)
    assert r.get("k") is None
    port = node[1]
    unknown = "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
    assert cli(port, "FOO", "a", "b").rstrip("\n") == unknown
    assert cli(port, "GET").rstrip("\n") == "ERR wrong number of arguments for 'get' command"
    assert cli(port, "GET", "a", "b").rstrip("\n") == "ERR wrong number of arguments for 'get' command"
    assert cli(port, "AUTH", "pw").startswith("ERR AUTH <password> called without any password configured")


def test_server_commands(r: redis.Redis) -> None:
    assert r.select(0) is True
    assert r.client_setname("worker-1") is True
    assert r.client_getname() == "worker-1"
    info = r.info()
    assert info["role"] == "master" and info["redis_version"]
    assert set(r.info("replication")) >= {"role", "cairn_revision"}
    assert r.dbsize() == len(r.keys("*"))
    assert r.command_count() > 30
    assert "get" in r.command()


def test_keys_and_scan(r: redis.Redis) -> None:
    names = {f"scan/{i:03d}".encode() for i in range(57)}
    r.mset(dict.fromkeys(names, b"v"))
    r.set("scanx/1", "v")
    assert set(r.keys("scan/*")) == names
    assert set(r.keys("scan/0[0-1]?")) == {n for n in names if n[5:7] in (b"00", b"01")}
    assert set(r.scan_iter(match="scan/*", count=7)) == names
    every = list(r.scan_iter(count=5))
    assert len(every) == len(set(every)) >= 58
    with pytest.raises(redis.ResponseError, match="invalid cursor"):
        r.scan(cursor=12345)


def test_redis_cli_and_etcdctl_see_the_same_store(node: tuple[Server, int]) -> None:
    server, port = node
    server.etcdctl("put", "/config/a", "from-etcd")
    assert cli(port, "GET", "/config/a") == "from-etcd\n"
    assert cli(port, "SET", "/config/b", "from-redis") == "OK\n"
    got = json.loads(server.etcdctl("get", "/config/b", "-w", "json").stdout)
    assert got["kvs"][0]["value"] == "ZnJvbS1yZWRpcw=="  # base64 of from-redis
    revision = got["header"]["revision"]
    info = cli(port, "INFO", "replication")
    assert f"cairn_revision:{revision}\n" in info
    assert cli(port, "SET", "lock:1", "me", "NX", "PX", "5000") == "OK\n"
    assert cli(port, "SET", "lock:1", "me", "NX", "PX", "5000") == "\n"  # nil
    lease = json.loads(server.etcdctl("get", "lock:1", "-w", "json").stdout)["kvs"][0]["lease"]
    assert lease != 0
    assert 0 < int(cli(port, "TTL", "lock:1")) <= 5
    # a whole script through redis-cli in one pipe, and RESP3
    out = cli(port, input="SET p 1\nINCR p\nGET p\nMGET p nope\n")
    assert out.split("\n")[:5] == ["OK", "2", "2", "2", ""]
    assert "proto 3\n" in cli(port, "HELLO", "3", resp3=True)


def test_resp3_with_hello(node: tuple[Server, int]) -> None:
    client = redis.Redis(port=node[1], protocol=3, socket_timeout=20)
    hello = client.execute_command("HELLO", "3")
    assert hello[b"proto"] == 3 and hello[b"server"] == b"redis"
    assert client.set("r3", "v") is True
    assert client.get("r3") == b"v"
    assert client.get("r3-missing") is None
    pipe = client.pipeline()
    pipe.incr("r3c").incr("r3c").get("r3c")
    assert pipe.execute() == [1, 2, b"2"]
    client.close()


def test_watch_conflict_aborts_exec(node: tuple[Server, int], r: redis.Redis) -> None:
    other = redis.Redis(port=node[1], socket_timeout=20)
    r.set("balance", 10)
    with r.pipeline() as pipe:
        pipe.watch("balance")
        value = int(pipe.get("balance"))
        other.set("balance", 99)  # someone else writes between WATCH and EXEC
        pipe.multi()
        pipe.set("balance", value - 1)
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert r.get("balance") == b"99"
    with r.pipeline() as pipe:
        pipe.watch("balance")
        pipe.multi()
        pipe.decr("balance")
        assert pipe.execute() == [98]
    other.close()


def test_exec_after_queueing_error_aborts(node: tuple[Server, int]) -> None:
    with socket.create_connection(("127.0.0.1", node[1]), timeout=20) as s:
        s.sendall(b"MULTI\r\nSET t 1\r\nNOSUCH x\r\nEXEC\r\nGET t\r\n")
        data = _read_until(s, b"$-1\r\n")
    assert data == (
        b"+OK\r\n+QUEUED\r\n-ERR unknown command 'NOSUCH', with args beginning with: 'x' \r\n"
        b"-EXECABORT Transaction discarded because of previous errors.\r\n$-1\r\n"
    )


def test_concurrent_incr_loses_nothing(node: tuple[Server, int]) -> None:
    def work() -> None:
        client = redis.Redis(port=node[1], socket_timeout=30)
        for _ in range(40):
            client.incr("counter/shared")
        client.close()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert redis.Redis(port=node[1]).get("counter/shared") == b"160"


@pytest.mark.timeout(120)
def test_ttl_key_disappears_and_subscriber_sees_it(node: tuple[Server, int], r: redis.Redis) -> None:
    pubsub = r.pubsub()
    pubsub.psubscribe("__keyspace@0__:ttl/*")
    events = redis.Redis(port=node[1], socket_timeout=20).pubsub()
    events.subscribe("__keyevent@0__:expired")
    for sub in (pubsub, events):
        assert sub.get_message(timeout=10)["type"] in ("psubscribe", "subscribe")
    r.set("ttl/k", "v", px=1000)  # leases are whole seconds and at least the node's minimum (2 s)
    r.set("other/k", "v")
    got = [pubsub.get_message(timeout=20) for _ in range(2)]
    assert [(m["channel"], m["data"]) for m in got] == [
        (b"__keyspace@0__:ttl/k", b"set"),
        (b"__keyspace@0__:ttl/k", b"expired"),
    ]
    assert got[0]["pattern"] == b"__keyspace@0__:ttl/*"
    seen = []  # other tests' TTL keys may expire meanwhile too
    while (b"__keyevent@0__:expired", b"ttl/k") not in seen:
        message = events.get_message(timeout=20)
        assert message is not None, seen
        seen.append((message["channel"], message["data"]))
    assert r.get("ttl/k") is None and r.exists("ttl/k") == 0
    pubsub.close()
    events.close()


def _read_until(s: socket.socket, tail: bytes) -> bytes:
    data = b""
    while not data.endswith(tail):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _closed_after(s: socket.socket) -> bytes | None:
    """Everything the server sends until it closes the connection; None if it was reset.

    A server that closes with our bytes still unread makes the kernel reset the connection, and
    what it sent last may be lost: Redis does the same with an over-long request.
    """
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return None
        if not chunk:
            return data
        data += chunk


@pytest.mark.parametrize(
    ("payload", "reply"),
    [
        (b"*1\r\n$999999999999\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b"*2\r\n$3\r\nGET\r\n+junk\r\n", b"-ERR Protocol error: expected '$', got '+'\r\n"),
        (b"*-x\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
        (b"A" * (1 << 20) + b"\r\n", b"-ERR Protocol error: too big inline request\r\n"),
        (
            b"*1\r\n$3\r\nGET\x00\x01\xff\xfe",
            b"-ERR Protocol error: bulk argument does not end with CRLF\r\n",
        ),
    ],
)
def test_bad_input_closes_the_connection_and_changes_nothing(
    node: tuple[Server, int], r: redis.Redis, payload: bytes, reply: bytes
) -> None:
    r.set("guard", "intact")
    before = r.info("replication")["cairn_revision"]
    with socket.create_connection(("127.0.0.1", node[1]), timeout=20) as s:
        try:
            s.sendall(b"PING\r\n" + payload)
        except ConnectionResetError:
            assert len(payload) > 65536  # closed while the rest of an over-long line was on its way
        else:
            answer = _closed_after(s)
            assert answer == b"+PONG\r\n" + reply or (answer is None and len(payload) > 65536)
    with socket.create_connection(("127.0.0.1", node[1]), timeout=20) as s:
        s.sendall(b"*3\r\n$3\r\nSET\r\n$5\r\nguard\r\n$10\r\n")  # truncated, then the client goes away
    assert r.get("guard") == b"intact"
    assert r.info("replication")["cairn_revision"] == before
    assert node[0].etcdctl("get", "guard", "--print-value-only").stdout == "intact\n"


def test_pipelined_gets_from_many_connections_get_their_own_values(node: tuple[Server, int]) -> None:
    """GETs of concurrent connections are read together; each must still get its own answers."""
    seed_client = redis.Redis(port=node[1], socket_timeout=20)
    for start in (0, 100):  # a Txn holds at most max-txn-ops (128) operations
        seed_client.mset({f"many/{i}": f"value-{i}" for i in range(start, start + 100)})
    failures: list[str] = []

    def work(worker: int) -> None:
        client = redis.Redis(port=node[1], socket_timeout=30)
        for round_ in range(5):
            keys = [f"many/{(worker * 37 + round_ * 11 + j) % 260}" for j in range(40)]
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
            expected = [f"value-{k[5:]}".encode() if int(k[5:]) < 200 else None for k in keys]
            if pipe.execute() != expected:
                failures.append(f"worker {worker} round {round_}")
        client.close()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    seed_client.close()


def test_pipelined_gets_of_missing_binary_and_empty_keys(r: redis.Redis) -> None:
    """One batch of GETs: each answers on its own, a bad key (empty) fails only its own GET."""
    binary = bytes(range(1, 256)) + b"\r\n$3\r\nGET"
    r.set(binary, b"\x00\r\nvalue\xff")
    r.set("pr/plain", "p")
    pipe = r.pipeline(transaction=False)
    for key in (binary, "pr/none", "", "pr/plain", binary, "pr/none2"):
        pipe.get(key)
    replies = pipe.execute(raise_on_error=False)
    assert replies[:2] == [b"\x00\r\nvalue\xff", None]
    assert isinstance(replies[2], redis.ResponseError)
    assert str(replies[2]) == "etcdserver: key is not provided"
    assert replies[3:] == [b"p", b"\x00\r\nvalue\xff", None]


def test_pipeline_mixing_get_and_set_keeps_order_and_reads_its_writes(r: redis.Redis) -> None:
    pipe = r.pipeline(transaction=False)
    pipe.set("mix/k", "a").get("mix/k").set("mix/k", "b").set("mix/j", "1").get("mix/k").get("mix/j")
    pipe.delete("mix/k").get("mix/k").set("mix/k", "c").get("mix/k").incr("mix/j").get("mix/j")
    assert pipe.execute() == [True, b"a", True, True, b"b", b"1", 1, None, True, b"c", 2, b"2"]


def test_ttl_options(node: tuple[Server, int], r: redis.Redis) -> None:
    server = node[0]

    def lease_of(key: str) -> int:
        return int(json.loads(server.etcdctl("get", key, "-w", "json").stdout)["kvs"][0].get("lease", 0))

    r.set("t/a", "1", ex=100)
    first = lease_of("t/a")
    assert first and 90 < r.ttl("t/a") <= 100 and r.pttl("t/a") % 1000 == 0
    r.set("t/a", "2", keepttl=True)
    assert lease_of("t/a") == first and r.get("t/a") == b"2"
    assert r.expire("t/a", 50, nx=True) is False  # has a TTL already
    assert r.expire("t/a", 500, gt=True) is True and r.ttl("t/a") > 400
    assert r.expire("t/a", 1000, lt=True) is False
    assert r.expire("t/b", 10, xx=True) is False  # no such key
    r.set("t/b", "x")
    assert r.expire("t/b", 10, xx=True) is False  # no TTL
    assert r.expire("t/b", 10) is True and r.ttl("t/b") <= 10
    r.set("t/a", "3")  # a plain SET drops the TTL; the old lease is revoked once it holds no key
    assert r.ttl("t/a") == -1
    deadline = time.monotonic() + 20
    while format(first, "x") in server.etcdctl("lease", "list").stdout.split():
        assert time.monotonic() < deadline, "the dropped lease was not revoked"
        time.sleep(0.2)
    past = int(time.time() * 1000) - 1000
    assert r.set("t/b", "gone", pxat=past) is True  # a time already past: set and expired at once
    assert r.exists("t/b") == 0
    with pytest.raises(redis.ResponseError, match=r"^GT and LT options at the same time are not compatible$"):
        r.expire("t/a", 10, gt=True, lt=True)


def test_subscribed_connection_in_resp2_and_resp3(node: tuple[Server, int], r: redis.Redis) -> None:
    with socket.create_connection(("127.0.0.1", node[1]), timeout=20) as s:
        s.sendall(b"SUBSCRIBE __keyspace@0__:sub/k\r\nGET sub/k\r\nPING\r\n")
        data = _read_until(s, b"$0\r\n\r\n")
        assert data == (
            b"*3\r\n$9\r\nsubscribe\r\n$20\r\n__keyspace@0__:sub/k\r\n:1\r\n"
            b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET "
            b"are allowed in this context\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n"
        )
    with socket.create_connection(("127.0.0.1", node[1]), timeout=20) as s:
        s.sendall(b"HELLO 3\r\nSUBSCRIBE __keyspace@0__:sub/k\r\n")
        _read_until(s, b":1\r\n")
        r.set("sub/k", "v")
        push = b">3\r\n$7\r\nmessage\r\n$20\r\n__keyspace@0__:sub/k\r\n$3\r\nset\r\n"
        assert _read_until(s, b"$3\r\nset\r\n") == push
        s.sendall(b"GET sub/k\r\n")  # RESP3 allows any command while subscribed
        assert _read_until(s, b"v\r\n") == b"$1\r\nv\r\n"


def test_auth_with_etcd_users_and_permissions(tmp_path: Path) -> None:
    server, port = start_node(tmp_path / "auth")
    try:
        for args in (
            ("user", "add", "root:rootpw"),
            ("user", "grant-role", "root", "root"),
            ("user", "add", "u:upw"),
            ("role", "add", "r"),
            ("role", "grant-permission", "r", "readwrite", "u/", "--prefix"),
            ("user", "grant-role", "u", "r"),
            ("auth", "enable"),
        ):
            server.etcdctl(*args)
        anonymous = redis.Redis(port=port, socket_timeout=20)
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):
            anonymous.get("u/a")
        with pytest.raises(redis.AuthenticationError, match="invalid username-password pair"):
            anonymous.execute_command("AUTH", "u", "wrong")
        user = redis.Redis(port=port, username="u", password="upw", socket_timeout=20)
        assert user.set("u/a", "1") is True and user.incr("u/a") == 2
        pipe = user.pipeline(transaction=False)
        pipe.get("u/a").get("u/b").get("u/a")
        assert pipe.execute() == [b"2", None, b"2"]
        with pytest.raises(redis.ResponseError, match="no permissions"):
            user.set("other", "1")
        with pytest.raises(redis.ResponseError, match="no permissions"):
            user.get("other")
        pipe = user.pipeline(transaction=False)  # a denied GET fails alone, not its whole batch
        replies = pipe.get("u/a").get("other").get("u/b").get("u/a").execute(raise_on_error=False)
        assert replies[0] == b"2" and replies[2:] == [None, b"2"]
        assert isinstance(replies[1], redis.ResponseError) and "no permissions" in str(replies[1])
        resp3 = redis.Redis(port=port, protocol=3, username="u", password="upw", socket_timeout=20)
        assert resp3.get("u/a") == b"2"
        for client in (anonymous, user, resp3):
            client.close()
    finally:
        server.stop()


CLI_SCRIPT = """\
SET c/a 1|OK
GET c/a|1
SET c/a 2 NX|
SET c/b 1 XX GET|
SET c/a 3 XX GET|1
SET c/t v EX 100|OK
SET c/t v PX 100000 KEEPTTL|ERR syntax error;
SET c/t v EXAT 9999999999|OK
SET c/t v PXAT 9999999999000|OK
MSET c/m1 a c/m2 b|OK
MGET c/m1 c/m2 c/none|a;b;
EXISTS c/m1 c/m2 c/none|2
DEL c/m1 c/none|1
INCR c/n|1
INCRBY c/n 10|11
DECR c/n|10
DECRBY c/n 5|5
KEYS c/m*|c/m2
SCAN 0 MATCH c/m* COUNT 100|0;c/m2
TTL c/a|-1
PTTL c/none|-2
EXPIRE c/a 100|1
PERSIST c/a|1
TTL c/a|-1
MULTI|OK
INCR c/n|QUEUED
GET c/n|QUEUED
EXEC|6;6
MULTI|OK
SET c/x 1|QUEUED
DISCARD|OK
GET c/x|
WATCH c/n|OK
UNWATCH|OK
PING|PONG
PING hi|hi
ECHO hello|hello
CLIENT SETNAME me|OK
CLIENT GETNAME|me
DBSIZE|4
SELECT 0|OK
NOSUCH a|ERR unknown command 'NOSUCH', with args beginning with: 'a' ;
GET|ERR wrong number of arguments for 'get' command;
"""


def test_every_command_through_redis_cli_one_by_one_and_piped(tmp_path: Path) -> None:
    """redis-cli sends stdin's commands one at a time; ``--pipe`` sends them all at once.

    CLI_SCRIPT is ``command|reply`` per line, a reply's lines joined by ``;`` (redis-cli prints a
    blank line after an error).
    """
    server, port = start_node(tmp_path / "cli")
    try:
        lines = [line.split("|") for line in CLI_SCRIPT.splitlines()]
        commands = "\n".join(command for command, _ in lines) + "\n"
        expected = [part for _, reply in lines for part in reply.split(";")]
        assert cli(port, input=commands).split("\n")[: len(expected)] == expected
        piped = subprocess.run(  # exits 1 when any reply was an error
            [REDIS_CLI, "-p", str(port), "--pipe"],
            input=commands.replace("c/", "p/"),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert f"errors: 3, replies: {len(lines)}" in piped.stdout
    finally:
        server.stop()


def test_random_garbage_on_the_socket_changes_nothing(node: tuple[Server, int], r: redis.Redis) -> None:
    seed = int(os.environ.get("RESP_FUZZ_SEED", random.randrange(1 << 30)))
    print(f"RESP_FUZZ_SEED={seed}")
    rng = random.Random(seed)
    r.set("guard2", "intact")
    before = r.info("replication")["cairn_revision"]
    for _ in range(20):
        payload = rng.randbytes(rng.randrange(1, 4096))
        if rng.random() < 0.5:
            payload = b"*3\r\n$3\r\nSET\r\n$6\r\nguard2\r\n" + payload  # garbage where the value should be
        with socket.create_connection(("127.0.0.1", node[1]), timeout=20) as s:
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                _closed_after(s)  # an error and a close, or replies to whatever parsed as commands
            except (ConnectionResetError, BrokenPipeError):
                pass
    assert r.get("guard2") == b"intact", seed
    assert r.info("replication")["cairn_revision"] == before, seed
