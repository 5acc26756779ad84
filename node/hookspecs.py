"""The pluggy hooks through which plugins add frontends and auth backends.

Hooks are called once at start-up (a hook call costs 1-2 µs, too much per request): a frontend
plugin returns objects that then run on their own, talking to the core through ``node.api.Client``.
Plugins are found through the ``cairn`` entry-point group and enabled by the config's ``plugins:``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import pluggy

if TYPE_CHECKING:
    from actors.auth.backends import AuthBackend
    from node.api import Client
    from node.config import NodeConfig

PROJECT = "cairn"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Frontend(Protocol):
    """An API frontend running in the frontend process (asyncio)."""

    name: str

    async def start(self, client: Client) -> None:
        """Bind the listening sockets and begin serving; return once serving."""

    async def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish for up to ``grace`` seconds, close."""


class FrontendSpec:
    @hookspec
    def cairn_frontends(self, config: NodeConfig, settings: dict) -> list[Frontend]:
        """Return the frontends this plugin runs; ``settings`` is its entry of the config's ``plugins:``."""


class AuthBackendSpec:
    @hookspec
    def cairn_auth_backends(self, config: NodeConfig, settings: dict) -> list[AuthBackend]:
        """Return the auth backends this plugin provides (see ``actors/auth/backends.py``); called
        once in the core process at start, in the order the config's ``plugins:`` lists them."""
