"""Auth backends: who a client is, beyond the built-in user/role store's own passwords.

The built-in store (``actors/auth/store.py``) is the first backend: a user with a password there is
checked against it, as etcd does. Plugins add more through the ``cairn_auth_backends`` hook
(``node/hookspecs.py``): a static credentials file, a client certificate's Common Name, or a
third party's LDAP or OIDC check. A backend answers *who* the client is; *what* it may do stays
with the replicated roles, so the user must exist in the store (``user add NAME --no-password``
for users whose credentials live elsewhere) — every member then decides permissions alike.

Frontends pass a verified certificate's CN in the token field, behind ``CERTIFICATE_PREFIX``:
a NUL no client can send in a gRPC metadata value or an HTTP header, and :func:`request_token`
strips from anything a client did send, so a CN can only come from a TLS handshake.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import structlog

log = structlog.get_logger()

CERTIFICATE_PREFIX = "\x00cn:"


class AuthBackend(Protocol):
    """One source of identities. Either method may answer None: "not mine, ask the next one"."""

    name: str

    def verify_password(self, name: str, password: bytes) -> bool | None:
        """True if this backend vouches for ``name`` with ``password``, False if it refuses.

        Runs on the auth actor's worker thread, so it may block (bcrypt, a network round trip);
        the per-user rate limit and the bounded queue in front of it still apply.
        """

    def certificate_user(self, common_name: str) -> str | None:
        """The user a client certificate with this verified CN stands for. Runs on the core's
        loop for every request without a token: it must be quick (no I/O)."""


def request_token(token: str | None, common_name: str | None) -> str | None:
    """What a frontend hands the core: the client's own token when it sent one (etcd prefers it
    to the certificate), else the certificate's CN (client-cert-auth), else None."""
    if token is not None:
        return token.lstrip("\x00")
    if common_name is not None:
        return CERTIFICATE_PREFIX + common_name
    return None


class BackendChain:
    """The plugin backends in the order of the config's ``plugins:``; the first answer wins."""

    def __init__(self, backends: Sequence[AuthBackend] = ()) -> None:
        self.backends = tuple(backends)

    def __bool__(self) -> bool:
        return bool(self.backends)

    def verify_password(self, name: str, password: bytes) -> tuple[bool | None, str]:
        """(verdict, backend): True or False from the first backend that knows the user, or
        (None, "") when none does. A backend that raises (an outage) refuses the login."""
        for backend in self.backends:
            try:
                verdict = backend.verify_password(name, password)
            except Exception as e:  # never crashes the core
                log.error("auth_backend_failed", backend=backend.name, user=name, error=str(e))
                return False, backend.name
            if verdict is not None:
                return verdict, backend.name
        return None, ""

    def certificate_user(self, common_name: str) -> str | None:
        for backend in self.backends:
            try:
                user = backend.certificate_user(common_name)
            except Exception as e:
                log.error("auth_backend_failed", backend=backend.name, common_name=common_name, error=str(e))
                continue
            if user is not None:
                return user
        return None
