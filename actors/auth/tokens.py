"""Auth tokens: etcd's ``simple`` tokens and signed ``jwt`` tokens, chosen by ``--auth-token``.

simple: a random 16-letter prefix chosen where the client authenticated, completed at apply time
with the raft index (``prefix.index``, as etcd does), and registered on every member by the
Authenticate entry, so any member accepts it. Unused for ``--auth-token-ttl`` seconds, it expires
(member-local clock, as in etcd); deleting a user or changing its password drops its tokens.

jwt: ``jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256|ES256|...,ttl=5m`` (etcd's syntax). The
token carries the user name and the auth revision it was issued at; any auth change makes older
tokens "old" (etcd's ErrAuthOldRevision), and clients re-authenticate.

Neither reads a clock: callers pass ``now`` (monotonic seconds for simple tokens, wall-clock
seconds for JWT expiry, which must mean the same on every member).
"""

from __future__ import annotations

import re
import secrets
import string

import jwt

LETTERS = string.ascii_letters
PREFIX_LENGTH = 16
DEFAULT_TTL = 300.0  # etcd's --auth-token-ttl default, seconds
JWT_DEFAULT_TTL = 300.0  # etcd's jwt ttl default (5m)
JWT_METHODS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})


class TokenConfigError(ValueError):
    """An ``--auth-token`` value cairn cannot use; the message names the option."""


class SimpleTokens:
    kind = "simple"

    def __init__(self, ttl: float = DEFAULT_TTL) -> None:
        self.ttl = ttl if ttl > 0 else DEFAULT_TTL
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (user, expires at)
        self._by_user: dict[str, set[str]] = {}

    def new_token(self, user: str, revision: int, wall_now: float) -> str:
        """The random prefix; :meth:`assign` completes it with the raft index."""
        return "".join(secrets.choice(LETTERS) for _ in range(PREFIX_LENGTH))

    def assign(self, user: str, proposed: str, index: int, now: float) -> str:
        token = f"{proposed}.{index}"
        self._tokens[token] = (user, now + self.ttl)
        self._by_user.setdefault(user, set()).add(token)
        return token

    def identify(self, token: str, revision: int, now: float, wall_now: float) -> tuple[str, int] | None:
        """``(user, auth revision)`` for a live token (and its TTL starts again), else None."""
        entry = self._tokens.get(token)
        if entry is None:
            return None
        user, expires = entry
        if expires <= now:
            self._drop(token, user)
            return None
        self._tokens[token] = (user, now + self.ttl)
        return user, revision

    def expire(self, now: float) -> int:
        """Drop tokens unused for a TTL; return how many."""
        dead = [(t, user) for t, (user, expires) in self._tokens.items() if expires <= now]
        for token, user in dead:
            self._drop(token, user)
        return len(dead)

    def _drop(self, token: str, user: str) -> None:
        del self._tokens[token]
        owned = self._by_user.get(user)
        if owned is not None:
            owned.discard(token)
            if not owned:
                del self._by_user[user]

    def invalidate_user(self, user: str) -> None:
        for token in self._by_user.pop(user, ()):
            self._tokens.pop(token, None)

    def disable(self) -> None:
        self._tokens.clear()
        self._by_user.clear()

    def __len__(self) -> int:
        return len(self._tokens)


class JwtTokens:
    kind = "jwt"

    def __init__(self, sign_method: str, public_key: bytes, private_key: bytes | None, ttl: float) -> None:
        self.sign_method = sign_method
        self.public_key = public_key
        self.private_key = private_key
        self.ttl = ttl

    def new_token(self, user: str, revision: int, wall_now: float) -> str:
        if self.private_key is None:
            raise TokenConfigError("auth-token: token signing attempted with verify-only key")
        claims = {"username": user, "revision": revision, "exp": int(wall_now + self.ttl)}
        return jwt.encode(claims, self.private_key, algorithm=self.sign_method)

    def assign(self, user: str, proposed: str, index: int, now: float) -> str:
        return proposed  # self-contained: nothing to register

    def identify(self, token: str, revision: int, now: float, wall_now: float) -> tuple[str, int] | None:
        try:
            claims = jwt.decode(
                token, self.public_key, algorithms=[self.sign_method], options={"verify_exp": False}
            )
        except jwt.PyJWTError:
            return None
        user, issued, expires = claims.get("username"), claims.get("revision"), claims.get("exp")
        if not isinstance(user, str) or not isinstance(issued, int) or not isinstance(expires, int | float):
            return None
        if expires <= wall_now:
            return None
        return user, issued

    def expire(self, now: float) -> int:
        return 0

    def invalidate_user(self, user: str) -> None:
        """A JWT cannot be recalled; the auth revision the change bumped makes it refused."""

    def disable(self) -> None:
        """Nothing is held."""

    def __len__(self) -> int:
        return 0


TokenProvider = SimpleTokens | JwtTokens

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float:
    """Go's duration syntax (``5m``, ``1h30m``, ``300s``) in seconds."""
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise TokenConfigError(f"auth-token: ttl {text!r} is not a duration like 5m or 300s")
    return total


def token_provider(spec: str, simple_ttl: float = DEFAULT_TTL) -> TokenProvider:
    """Build the provider ``--auth-token`` names (reads the key files of a jwt provider)."""
    kind, _, rest = spec.partition(",")
    if kind == "simple":
        if rest:
            raise TokenConfigError("auth-token: simple takes no options")
        return SimpleTokens(simple_ttl)
    if kind != "jwt":
        raise TokenConfigError(f"auth-token: unknown token type {kind!r} (simple or jwt)")
    options: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        name, sep, value = item.partition("=")
        if not sep or name not in ("pub-key", "priv-key", "sign-method", "ttl"):
            raise TokenConfigError(f"auth-token: unknown jwt option {item!r}")
        options[name] = value
    method = options.get("sign-method", "")
    if method not in JWT_METHODS:
        raise TokenConfigError(f"auth-token: jwt sign-method {method!r} is not one of {sorted(JWT_METHODS)}")
    if "pub-key" not in options:
        raise TokenConfigError("auth-token: jwt needs pub-key=PATH")
    ttl = parse_duration(options["ttl"]) if "ttl" in options else JWT_DEFAULT_TTL
    try:
        with open(options["pub-key"], "rb") as f:
            public = f.read()
        private = None
        if "priv-key" in options:
            with open(options["priv-key"], "rb") as f:
                private = f.read()
    except OSError as e:
        raise TokenConfigError(f"auth-token: cannot read a jwt key: {e}") from None
    provider = JwtTokens(method, public, private, ttl)
    if private is not None:  # the pair must match, as etcd checks at start
        probe = provider.new_token("probe", 1, 0.0)
        try:
            jwt.decode(probe, public, algorithms=[method], options={"verify_exp": False})
        except jwt.PyJWTError as e:
            raise TokenConfigError(f"auth-token: jwt public and private keys do not match: {e}") from None
    return provider
