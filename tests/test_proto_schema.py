"""Our etcd v3 .proto schema: round trips, pinned wire bytes, and conformance with etcd's reference.

The conformance test reads the reference .proto files shipped by the Debian package
golang-etcd-server-dev (installed in CI) with a small regex-based reader and compares every
message, enum and service in them with the descriptors compiled from actors/proto/*.proto.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, FileDescriptor
from google.protobuf.internal import api_implementation

from actors.proto import (
    auth_pb2,
    kv_pb2,
    rpc_pb2,
    rpc_pb2_grpc,
    v3election_pb2,
    v3election_pb2_grpc,
    v3lock_pb2,
    v3lock_pb2_grpc,
)

REPO = Path(__file__).resolve().parents[1]
ETCD_SRC = Path("/usr/share/gocode/src/go.etcd.io/etcd")
# reference file -> our compiled module
REFERENCE = {
    ETCD_SRC / "mvcc/mvccpb/kv.proto": kv_pb2,
    ETCD_SRC / "auth/authpb/auth.proto": auth_pb2,
    ETCD_SRC / "etcdserver/etcdserverpb/rpc.proto": rpc_pb2,
    ETCD_SRC / "etcdserver/api/v3lock/v3lockpb/v3lock.proto": v3lock_pb2,
    ETCD_SRC / "etcdserver/api/v3election/v3electionpb/v3election.proto": v3election_pb2,
}

# ---------------------------------------------------------------------------- the loader


def test_loader_uses_upb_and_is_idempotent() -> None:
    import importlib

    import actors.proto as proto

    assert api_implementation.Type() == "upb"
    assert type(rpc_pb2.PutRequest).__module__.startswith("google._upb")
    again = importlib.import_module("actors.proto")
    assert again is proto and again.rpc_pb2 is rpc_pb2
    import actors.proto.rpc_pb2 as aliased

    assert aliased is rpc_pb2
    assert str(proto.PROTO_DIR) not in sys.path
    for module in (rpc_pb2_grpc, v3lock_pb2_grpc, v3election_pb2_grpc):
        assert module.__name__.endswith("_pb2_grpc")
    assert hasattr(rpc_pb2_grpc, "KVStub") and hasattr(rpc_pb2_grpc, "add_WatchServicer_to_server")
    assert hasattr(v3lock_pb2_grpc, "LockServicer") and hasattr(v3election_pb2_grpc, "ElectionStub")


def test_fresh_interpreter_import_leaves_sys_path_alone() -> None:
    code = (
        "import sys; before = list(sys.path); import grpc_tools.protoc; before = list(sys.path)\n"
        "from actors.proto import rpc_pb2, v3election_pb2\n"
        "import actors.proto\n"
        "assert sys.path == before, (before, sys.path)\n"
        "assert rpc_pb2.PutRequest(key=b'k').key == b'k'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


# ---------------------------------------------------------------------------- round trips


def _roundtrip(message):
    data = message.SerializeToString()
    back = type(message).FromString(data)
    assert back == message
    assert back.SerializeToString() == data
    return back


def test_put_request_binary_safe() -> None:
    key = b"\x00k\xff\xfe\x00"
    value = b"\x80\xc3(\x00\xed\xa0\x80"  # invalid UTF-8 on purpose
    back = _roundtrip(rpc_pb2.PutRequest(key=key, value=value, lease=7, prev_kv=True))
    assert back.key == key and back.value == value and back.lease == 7 and back.prev_kv
    assert not back.ignore_value and not back.ignore_lease


def test_pinned_wire_bytes() -> None:
    # Hand-computed encodings: they pin field numbers/types independently of any reference file.
    assert rpc_pb2.PutRequest(key=b"a", value=b"b").SerializeToString() == b"\x0a\x01a\x12\x01b"
    # Compare.range_end is field 64: tag (64 << 3) | 2 = 514 = varint 0x82 0x04.
    assert rpc_pb2.Compare(range_end=b"z").SerializeToString() == b"\x82\x04\x01z"
    # WatchResponse.events is field 11; LeaseGrantRequest.TTL=1, ID=2.
    assert rpc_pb2.WatchResponse(events=[kv_pb2.Event()]).SerializeToString() == b"\x5a\x00"
    assert rpc_pb2.LeaseGrantRequest(TTL=5, ID=9).SerializeToString() == b"\x08\x05\x10\x09"
    # Negative int64 is a 10-byte varint (int64, not sint64).
    assert len(rpc_pb2.RangeRequest(revision=-1).SerializeToString()) == 11


def test_txn_request_nested_with_every_compare_target() -> None:
    C = rpc_pb2.Compare
    compares = [
        C(key=b"k", target=C.VERSION, result=C.EQUAL, version=3),
        C(key=b"k", target=C.CREATE, result=C.GREATER, create_revision=10),
        C(key=b"k", target=C.MOD, result=C.LESS, mod_revision=20),
        C(key=b"k", target=C.VALUE, result=C.NOT_EQUAL, value=b"\xff\x00"),
        C(key=b"a", range_end=b"\x00", target=C.LEASE, result=C.EQUAL, lease=0x1234),
    ]
    inner = rpc_pb2.TxnRequest(
        compare=[C(key=b"x", target=C.VALUE, value=b"")],
        success=[rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=b"x", prev_kv=True))],
    )
    txn = rpc_pb2.TxnRequest(
        compare=compares,
        success=[
            rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"k", value=b"v")),
            rpc_pb2.RequestOp(
                request_range=rpc_pb2.RangeRequest(
                    key=b"a",
                    range_end=b"b",
                    sort_order=rpc_pb2.RangeRequest.DESCEND,
                    sort_target=rpc_pb2.RangeRequest.MOD,
                )
            ),
            rpc_pb2.RequestOp(request_txn=inner),
        ],
        failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"k", count_only=True))],
    )
    back = _roundtrip(txn)
    got = [(c.target, c.WhichOneof("target_union")) for c in back.compare]
    assert got == [
        (C.VERSION, "version"),
        (C.CREATE, "create_revision"),
        (C.MOD, "mod_revision"),
        (C.VALUE, "value"),
        (C.LEASE, "lease"),
    ]
    assert back.compare[3].value == b"\xff\x00" and back.compare[4].range_end == b"\x00"
    assert [op.WhichOneof("request") for op in back.success] == [
        "request_put",
        "request_range",
        "request_txn",
    ]
    nested = back.success[2].request_txn
    # An explicitly set empty bytes member still selects the oneof branch.
    assert nested.compare[0].WhichOneof("target_union") == "value"
    assert nested.success[0].request_delete_range.prev_kv
    assert back.failure[0].request_range.count_only


def test_range_response_with_kvs() -> None:
    kvs = [
        kv_pb2.KeyValue(key=b"a", value=b"1", create_revision=2, mod_revision=5, version=3, lease=0),
        kv_pb2.KeyValue(key=b"b\x00", value=b"\xfe", create_revision=4, mod_revision=4, version=1, lease=99),
    ]
    header = rpc_pb2.ResponseHeader(cluster_id=2**64 - 1, member_id=1, revision=5, raft_term=2)
    back = _roundtrip(rpc_pb2.RangeResponse(header=header, kvs=kvs, more=True, count=7))
    assert back.header.cluster_id == 2**64 - 1
    assert [kv.key for kv in back.kvs] == [b"a", b"b\x00"]
    assert back.kvs[1].lease == 99 and back.more and back.count == 7
    resp = rpc_pb2.TxnResponse(
        succeeded=True, responses=[rpc_pb2.ResponseOp(response_range=back)], header=header
    )
    assert _roundtrip(resp).responses[0].WhichOneof("response") == "response_range"


# ---------------------------------------------------------------------------- conformance

_SCALARS = [
    *("double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64"),
    *("fixed32", "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes"),
]
_TYPE_NAME = {getattr(FieldDescriptor, "TYPE_" + name.upper()): name for name in _SCALARS}

_BLOCK = re.compile(r"\b(message|enum|service|oneof)\s+(\w+)\s*\{|\{|\}")
_FIELD = re.compile(r"^\s*(repeated\s+)?([\w.]+)\s+(\w+)\s*=\s*(\d+)\s*(?:\[[^\]]*\])?\s*;", re.M)
_ENUM_VALUE = re.compile(r"^\s*(\w+)\s*=\s*(-?\d+)\s*(?:\[[^\]]*\])?\s*;", re.M)
_RPC = re.compile(
    r"\brpc\s+(\w+)\s*\(\s*(stream\s+)?([\w.]+)\s*\)\s*returns\s*\(\s*(stream\s+)?([\w.]+)\s*\)"
)
_PACKAGE = re.compile(r"^\s*package\s+([\w.]+)\s*;", re.M)


class Schema:
    """Flattened schema, keyed by fully-qualified name.

    messages: name -> {field: (number, type, repeated, oneof)}   (type fully qualified unless scalar)
    enums:    name -> {value: number}
    services: name -> {rpc: (request, response, client_streaming, server_streaming)}
    """

    def __init__(self) -> None:
        self.messages: dict[str, dict[str, tuple]] = {}
        self.enums: dict[str, dict[str, int]] = {}
        self.services: dict[str, dict[str, tuple]] = {}


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def read_reference(paths: list[Path]) -> Schema:
    """Parse .proto files with regexes (enough for etcd's files: no maps, groups or extensions)."""
    raw_messages: dict[str, tuple[str, dict[str, tuple]]] = {}  # name -> (scope, fields, types unresolved)
    schema = Schema()
    for path in paths:
        text = _strip_comments(path.read_text())
        package = _PACKAGE.search(text).group(1)
        # Stack frames: [kind, full name, direct body chunks]; "other" for option bodies.
        stack: list[list] = [["file", package, []]]
        pos = 0
        for m in _BLOCK.finditer(text):
            stack[-1][2].append(text[pos : m.start()])
            pos = m.end()
            if m.group(1):
                kind, name = m.group(1), m.group(2)
                parent = stack[-1]
                full = parent[1] if kind == "oneof" else f"{parent[1]}.{name}"
                stack.append([kind, full, [], name])
            elif m.group(0) == "{":
                stack.append(["other", stack[-1][1], []])
            else:
                frame = stack.pop()
                kind, full, body = frame[0], frame[1], "".join(frame[2])
                if kind == "message":
                    fields = raw_messages.setdefault(full, (full, {}))[1]
                    for f in _FIELD.finditer(body):
                        fields[f.group(3)] = (int(f.group(4)), f.group(2), bool(f.group(1)), None)
                elif kind == "oneof":
                    fields = raw_messages.setdefault(full, (full, {}))[1]
                    for f in _FIELD.finditer(body):
                        fields[f.group(3)] = (int(f.group(4)), f.group(2), bool(f.group(1)), frame[3])
                elif kind == "enum":
                    schema.enums[full] = {v.group(1): int(v.group(2)) for v in _ENUM_VALUE.finditer(body)}
                elif kind == "service":
                    # Types stay unresolved until every file is read.
                    schema.services[full] = {
                        r.group(1): (r.group(3), r.group(5), bool(r.group(2)), bool(r.group(4)))
                        for r in _RPC.finditer(body)
                    }
        assert len(stack) == 1, f"unbalanced braces in {path}"

    known = set(raw_messages) | set(schema.enums)
    for full, (scope, fields) in raw_messages.items():
        schema.messages[full] = {
            name: (num, typ if typ in _SCALARS else _lookup(typ, scope, known), rep, oneof)
            for name, (num, typ, rep, oneof) in fields.items()
        }
    # Services may be declared before their messages; resolve their types now.
    for service, rpcs in schema.services.items():
        scope = service.rsplit(".", 1)[0]
        for rpc, (req, resp, cs, ss) in rpcs.items():
            rpcs[rpc] = (_lookup(req, scope, known), _lookup(resp, scope, known), cs, ss)
    return schema


def _lookup(name: str, scope: str, known: set[str]) -> str:
    """Protobuf name resolution: try the innermost scope first, then each enclosing one."""
    if name.startswith("."):
        return name[1:]
    parts = scope.split(".")
    for i in range(len(parts), -1, -1):
        candidate = ".".join([*parts[:i], name])
        if candidate in known:
            return candidate
    raise AssertionError(f"reference reader cannot resolve type {name!r} from scope {scope!r}")


def _field_type(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return field.message_type.full_name
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.full_name
    return _TYPE_NAME[field.type]


def _is_repeated(field: FieldDescriptor) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf >= 5.29; `label` is gone in 7
        return field.is_repeated
    return field.label == FieldDescriptor.LABEL_REPEATED


def read_compiled(files: list[FileDescriptor]) -> Schema:
    schema = Schema()

    def add_enum(enum: EnumDescriptor) -> None:
        schema.enums[enum.full_name] = {v.name: v.number for v in enum.values}

    def add_message(message: Descriptor) -> None:
        schema.messages[message.full_name] = {
            f.name: (
                f.number,
                _field_type(f),
                _is_repeated(f),
                f.containing_oneof.name if f.containing_oneof else None,
            )
            for f in message.fields
        }
        for nested in message.nested_types:
            add_message(nested)
        for enum in message.enum_types:
            add_enum(enum)

    for file in files:
        for message in file.message_types_by_name.values():
            add_message(message)
        for enum in file.enum_types_by_name.values():
            add_enum(enum)
        for service in file.services_by_name.values():
            schema.services[service.full_name] = {
                m.name: (
                    m.input_type.full_name,
                    m.output_type.full_name,
                    m.client_streaming,
                    m.server_streaming,
                )
                for m in service.methods
            }
    return schema


@pytest.fixture(scope="module")
def reference() -> Schema:
    missing = [str(p) for p in REFERENCE if not p.is_file()]
    if missing:
        pytest.fail(
            "etcd reference .proto files not found: "
            + ", ".join(missing)
            + "\nInstall them with: sudo apt-get install golang-etcd-server-dev",
            pytrace=False,
        )
    return read_reference(list(REFERENCE))


@pytest.fixture(scope="module")
def compiled() -> Schema:
    return read_compiled([module.DESCRIPTOR for module in REFERENCE.values()])


# cairn's own fields, numbered far above etcd's so etcd's clients skip them (docs/security.md)
EXTENSIONS = {
    "etcdserverpb.Member": {"curvePublicKey": (1000, "string", False, None)},
    "etcdserverpb.MemberAddRequest": {"curvePublicKey": (1000, "string", False, None)},
}


def test_reference_reader_sanity(reference: Schema) -> None:
    # Guard against a reader that silently finds nothing.
    assert len(reference.messages) > 100
    assert reference.messages["etcdserverpb.Compare"]["range_end"] == (64, "bytes", False, None)
    assert reference.messages["etcdserverpb.RangeResponse"]["kvs"] == (2, "mvccpb.KeyValue", True, None)
    assert reference.messages["etcdserverpb.WatchCreateRequest"]["filters"] == (
        5,
        "etcdserverpb.WatchCreateRequest.FilterType",
        True,
        None,
    )
    assert reference.enums["etcdserverpb.AlarmType"] == {"NONE": 0, "NOSPACE": 1, "CORRUPT": 2}
    assert reference.services["etcdserverpb.Watch"]["Watch"] == (
        "etcdserverpb.WatchRequest",
        "etcdserverpb.WatchResponse",
        True,
        True,
    )
    assert set(reference.services) == {
        "etcdserverpb.KV",
        "etcdserverpb.Watch",
        "etcdserverpb.Lease",
        "etcdserverpb.Cluster",
        "etcdserverpb.Maintenance",
        "etcdserverpb.Auth",
        "v3lockpb.Lock",
        "v3electionpb.Election",
    }


def test_packages_match(reference: Schema) -> None:
    for path, module in REFERENCE.items():
        package = _PACKAGE.search(_strip_comments(path.read_text())).group(1)
        assert module.DESCRIPTOR.package == package, path


def test_messages_match_reference(reference: Schema, compiled: Schema) -> None:
    assert sorted(set(reference.messages) - set(compiled.messages)) == [], "messages missing from our schema"
    assert sorted(set(compiled.messages) - set(reference.messages)) == [], "messages not in the reference"
    for name, fields in reference.messages.items():
        assert compiled.messages[name] == {**fields, **EXTENSIONS.get(name, {})}, f"fields of {name} differ"


def test_enums_match_reference(reference: Schema, compiled: Schema) -> None:
    assert sorted(reference.enums) == sorted(compiled.enums)
    for name, values in reference.enums.items():
        assert compiled.enums[name] == values, f"values of {name} differ"


def test_services_match_reference(reference: Schema, compiled: Schema) -> None:
    assert sorted(reference.services) == sorted(compiled.services)
    for name, rpcs in reference.services.items():
        assert compiled.services[name] == rpcs, f"rpcs of {name} differ"


def test_oneofs_match_reference(reference: Schema) -> None:
    expected = {
        ("etcdserverpb.RequestOp", "request"),
        ("etcdserverpb.ResponseOp", "response"),
        ("etcdserverpb.Compare", "target_union"),
        ("etcdserverpb.WatchRequest", "request_union"),
    }
    found = {
        (msg, oneof) for msg, fields in reference.messages.items() for *_, oneof in fields.values() if oneof
    }
    assert found == expected
    for msg, oneof in expected:
        descriptor = rpc_pb2.DESCRIPTOR.message_types_by_name[msg.split(".")[1]]
        assert list(descriptor.oneofs_by_name) == [oneof]
