"""pluggy registration of the REST frontend (entry point ``cairn: rest``)."""

from __future__ import annotations

from node.config import NodeConfig
from node.hookspecs import Frontend, hookimpl
from plugins.rest.server import RestFrontend


@hookimpl
def cairn_frontends(config: NodeConfig, settings: dict) -> list[Frontend]:
    return [RestFrontend(config, settings)]
