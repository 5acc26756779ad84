"""Finding and enabling plugins: entry points of the ``cairn`` group, filtered by the config."""

from __future__ import annotations

import pluggy
import structlog

from actors.auth.backends import AuthBackend
from node.config import ConfigError, NodeConfig
from node.hookspecs import PROJECT, AuthBackendSpec, Frontend, FrontendSpec

log = structlog.get_logger()


def plugin_manager(config: NodeConfig) -> pluggy.PluginManager:
    """A manager holding exactly the plugins the config enables (``enabled: false`` turns one off)."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(FrontendSpec)
    pm.add_hookspecs(AuthBackendSpec)
    pm.load_setuptools_entrypoints(PROJECT)
    available = {name for name, _ in pm.list_name_plugin()}
    for name in set(config.plugins) - available:
        raise ConfigError(
            f"plugins: no plugin named {name!r} is installed (have: {', '.join(sorted(available))})"
        )
    for name, plugin in list(pm.list_name_plugin()):
        settings = config.plugins.get(name)
        if settings is None or not settings.get("enabled", True):
            pm.unregister(plugin, name)
    return pm


def frontends(config: NodeConfig) -> list[Frontend]:
    """Ask every enabled plugin for its frontends, passing each its own settings."""
    pm = plugin_manager(config)
    result: list[Frontend] = []
    for impl in pm.hook.cairn_frontends.get_hookimpls():
        settings = config.plugins.get(impl.plugin_name, {})
        result.extend(impl.function(config=config, settings=settings))
    log.info("plugins_loaded", frontends=[f.name for f in result])
    return result


def auth_backends(config: NodeConfig) -> list[AuthBackend]:
    """The enabled plugins' auth backends, in the order the config lists the plugins."""
    pm = plugin_manager(config)
    order = list(config.plugins)
    impls = sorted(pm.hook.cairn_auth_backends.get_hookimpls(), key=lambda i: order.index(i.plugin_name))
    result: list[AuthBackend] = []
    for impl in impls:
        result.extend(impl.function(config=config, settings=config.plugins.get(impl.plugin_name, {})))
    log.info("auth_backends_loaded", backends=[b.name for b in result])
    return result
