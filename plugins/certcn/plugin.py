"""pluggy registration of the client-certificate backend (entry point ``cairn: cert-cn``).

With ``client-cert-auth`` on and auth enabled, a request without a token acts as the user its TLS
certificate names, as etcd does (``AuthInfoFromTLS``). Enabled by default. Settings: ``users``, an
optional mapping of CN to user name for certificates whose CN is not the user's name; with it,
only the CNs it lists are users (others act as no user: "etcdserver: user name is empty").
"""

from __future__ import annotations

from collections.abc import Mapping

from actors.auth.backends import AuthBackend
from node.config import ConfigError, NodeConfig
from node.hookspecs import hookimpl


class CertificateBackend:
    name = "cert-cn"

    def __init__(self, users: Mapping[str, str] | None = None) -> None:
        self.users = None if users is None else dict(users)

    def verify_password(self, name: str, password: bytes) -> bool | None:
        return None

    def certificate_user(self, common_name: str) -> str | None:
        if self.users is None:
            return common_name or None
        return self.users.get(common_name)


@hookimpl
def cairn_auth_backends(config: NodeConfig, settings: dict) -> list[AuthBackend]:
    users = settings.get("users")
    if users is not None and not isinstance(users, Mapping):
        raise ConfigError("plugins.cert-cn.users must map certificate CNs to user names")
    return [CertificateBackend(None if users is None else {str(k): str(v) for k, v in users.items()})]
