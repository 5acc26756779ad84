"""pluggy registration of the RESP (Redis protocol) frontend (entry point ``cairn: resp``)."""

from __future__ import annotations

from node.config import NodeConfig
from node.hookspecs import Frontend, hookimpl
from plugins.resp.server import RespFrontend


@hookimpl
def cairn_frontends(config: NodeConfig, settings: dict) -> list[Frontend]:
    return [RespFrontend(config, settings)]
