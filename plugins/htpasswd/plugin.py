"""pluggy registration of the htpasswd auth backend (entry point ``cairn: htpasswd``).

Settings: ``file`` (required), the path of the credentials file.
"""

from __future__ import annotations

from actors.auth.backends import AuthBackend
from node.config import ConfigError, NodeConfig
from node.hookspecs import hookimpl
from plugins.htpasswd.backend import HtpasswdBackend


@hookimpl
def cairn_auth_backends(config: NodeConfig, settings: dict) -> list[AuthBackend]:
    path = settings.get("file")
    if not path:
        raise ConfigError("plugins.htpasswd: set 'file', the path of the credentials file")
    return [HtpasswdBackend(str(path))]
