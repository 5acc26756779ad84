"""pluggy registration of the native ZeroMQ frontend (entry point ``cairn: zmq``)."""

from __future__ import annotations

from node.config import NodeConfig
from node.hookspecs import Frontend, hookimpl
from plugins.zmq.server import ZmqFrontend


@hookimpl
def cairn_frontends(config: NodeConfig, settings: dict) -> list[Frontend]:
    return [ZmqFrontend(settings, config.data_dir)]
