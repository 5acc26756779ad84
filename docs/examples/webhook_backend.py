"""An example third-party auth backend for cairn: passwords checked by an HTTP service.

The same shape fits LDAP (a bind as the user) or OIDC (a resource-owner password grant, or token
introspection): ``verify_password`` runs on the core's auth worker thread, so a blocking network
call is fine there; answer True (vouch), False (refuse) or None (not a user of this service).

Packaged with an entry point in the ``cairn`` group and enabled in the node's config::

    # pyproject.toml of the third-party package
    [project.entry-points.cairn]
    webhook = "webhook_backend"

    # cairn config (YAML)
    plugins: {grpc: {}, rest: {}, cert-cn: {}, webhook: {url: "http://127.0.0.1:8900/check"}}

The service gets ``POST url`` with ``{"user": ..., "password": ...}`` and answers 200 (right
password), 401 (wrong) or 404 (unknown user). tests/test_auth_backends.py installs this very
file as a package and logs in through it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pluggy

hookimpl = pluggy.HookimplMarker("cairn")  # no import of cairn needed: the marker is by name


class WebhookBackend:
    name = "webhook"

    def __init__(self, url: str, timeout: float = 3.0) -> None:
        self.url = url
        self.timeout = timeout

    def verify_password(self, name: str, password: bytes) -> bool | None:
        body = json.dumps({"user": name, "password": password.decode("utf-8", "replace")}).encode()
        request = urllib.request.Request(self.url, body, {"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout):
                return True
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            if e.code == 401:
                return False
            raise  # anything else is an outage: cairn logs it and refuses the login

    def certificate_user(self, common_name: str) -> str | None:
        return None


@hookimpl
def cairn_auth_backends(config: object, settings: dict) -> list[WebhookBackend]:
    return [WebhookBackend(str(settings["url"]), float(settings.get("timeout", 3.0)))]
