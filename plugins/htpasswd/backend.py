"""Passwords from a static file in Apache's htpasswd format, bcrypt hashes only (``htpasswd -B``).

Each line is ``name:$2y$...``; blank lines and ``#`` comments are skipped. Other htpasswd hash
kinds (MD5 ``$apr1$``, SHA, crypt) are refused at start, naming the line, rather than silently
never matching. The file is read again when its modification time changes, so an operator edits
it in place without restarting the node. It only vouches for users it lists; permissions still
come from the user's roles in the store (add the user there with ``--no-password``).
"""

from __future__ import annotations

import os
import threading

import bcrypt
import structlog

from node.config import ConfigError

log = structlog.get_logger()

BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")


def parse(text: str, path: str) -> dict[str, bytes]:
    """name -> bcrypt hash; a line that is not ``name:bcrypt-hash`` raises :class:`ConfigError`."""
    users: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, hashed = line.partition(":")
        if not sep or not name:
            raise ConfigError(f"plugins.htpasswd: {path}:{number} is not name:hash")
        if not hashed.startswith(BCRYPT_PREFIXES):
            raise ConfigError(
                f"plugins.htpasswd: {path}:{number}: user {name!r} has no bcrypt hash (htpasswd -B)"
            )
        users[name] = hashed.encode()
    return users


class HtpasswdBackend:
    name = "htpasswd"

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()  # the worker thread reads; reloads replace the table whole
        self._mtime = 0.0
        self._users: dict[str, bytes] = {}
        self._load()

    def _load(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime
            if mtime == self._mtime:
                return
            with open(self.path, encoding="utf-8") as f:
                users = parse(f.read(), self.path)
        except OSError as e:
            raise ConfigError(f"plugins.htpasswd: file {self.path!r}: {e.strerror}") from None
        self._users, self._mtime = users, mtime
        log.info("htpasswd_loaded", path=self.path, users=len(users))

    def verify_password(self, name: str, password: bytes) -> bool | None:
        with self._lock:
            try:
                self._load()
            except ConfigError as e:  # a broken edit: keep serving with the last good table
                log.error("htpasswd_reload_failed", error=str(e))
            stored = self._users.get(name)
        if stored is None:
            return None
        try:
            return bcrypt.checkpw(password, stored)
        except ValueError:
            return False

    def certificate_user(self, common_name: str) -> str | None:
        return None
