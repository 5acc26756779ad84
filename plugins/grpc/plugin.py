"""pluggy registration of the gRPC frontend (entry point ``cairn: grpc``)."""

from __future__ import annotations

from node.config import NodeConfig
from node.hookspecs import Frontend, hookimpl
from plugins.grpc.server import GrpcFrontend


@hookimpl
def cairn_frontends(config: NodeConfig, settings: dict) -> list[Frontend]:
    return [GrpcFrontend(config, settings)]
