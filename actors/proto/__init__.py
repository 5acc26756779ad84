"""The etcd v3 API schema (our own ``.proto`` files), compiled at import time.

No generated ``*_pb2.py`` code is kept in the tree: the ``.proto`` files next to this
module are the single source of truth, so they can never drift from stale generated
code, and there is no codegen step to forget. They are compiled when this package is
first imported, in process, by grpcio-tools' runtime compiler (``grpc.protos`` /
``grpc.protos_and_services``); that takes a few tens of milliseconds, once per process.

Usage::

    from actors.proto import kv_pb2, rpc_pb2, rpc_pb2_grpc

The runtime compiler names its modules after the ``.proto`` files and registers them
as top-level modules (``kv_pb2``, ``rpc_pb2``, ...) because the generated code imports
its dependencies that way (``rpc_pb2`` does ``import kv_pb2``). They are also aliased
as ``actors.proto.<name>`` so ``import actors.proto.rpc_pb2`` works too. Our directory
is on ``sys.path`` only while compiling.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import grpc

PROTO_DIR = Path(__file__).resolve().parent

# proto file -> expected protobuf package, in dependency order.
_FILES = {
    "kv.proto": "mvccpb",
    "auth.proto": "authpb",
    "rpc.proto": "etcdserverpb",
    "v3lock.proto": "v3lockpb",
    "v3election.proto": "v3electionpb",
}
# proto files that define services (and so also get a *_pb2_grpc module).
_WITH_SERVICES = ("rpc.proto", "v3lock.proto", "v3election.proto")


def _check(module: ModuleType, proto: str, package: str) -> ModuleType:
    """Refuse a same-named module that is not ours (e.g. another project's ``rpc_pb2``)."""
    descriptor = getattr(module, "DESCRIPTOR", None)
    if descriptor is None or descriptor.name != proto or descriptor.package != package:
        raise ImportError(
            f"module {module.__name__!r} is not compiled from cairn's {proto} "
            f"(found {getattr(module, '__file__', None) or module!r}); a module of that name "
            "was imported before actors.proto"
        )
    return module


def _load() -> dict[str, ModuleType]:
    modules: dict[str, ModuleType] = {}
    proto_dir = str(PROTO_DIR)
    # First on the path, so that a same-named .proto elsewhere on sys.path cannot shadow ours.
    sys.path.insert(0, proto_dir)
    try:
        for proto, package in _FILES.items():
            stem = proto.removesuffix(".proto")
            if proto in _WITH_SERVICES:
                pb2, pb2_grpc = grpc.protos_and_services(proto)
                modules[f"{stem}_pb2_grpc"] = pb2_grpc
            else:
                pb2 = grpc.protos(proto)
            modules[f"{stem}_pb2"] = _check(pb2, proto, package)
    finally:
        # Remove only our own entry: grpc_tools appends its well-known-types include dir
        # to sys.path on first use, and that one must stay.
        sys.path.remove(proto_dir)
    for name, module in modules.items():
        sys.modules.setdefault(f"{__name__}.{name}", module)
    return modules


_modules = _load()

kv_pb2 = _modules["kv_pb2"]
auth_pb2 = _modules["auth_pb2"]
rpc_pb2 = _modules["rpc_pb2"]
rpc_pb2_grpc = _modules["rpc_pb2_grpc"]
v3lock_pb2 = _modules["v3lock_pb2"]
v3lock_pb2_grpc = _modules["v3lock_pb2_grpc"]
v3election_pb2 = _modules["v3election_pb2"]
v3election_pb2_grpc = _modules["v3election_pb2_grpc"]

del _modules

__all__ = [
    "PROTO_DIR",
    "auth_pb2",
    "kv_pb2",
    "rpc_pb2",
    "rpc_pb2_grpc",
    "v3election_pb2",
    "v3election_pb2_grpc",
    "v3lock_pb2",
    "v3lock_pb2_grpc",
]
