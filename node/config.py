"""Node configuration with etcd's own keys, from a YAML file, command-line flags or ``ETCD_*``.

An etcd deployment's config file or flag list should start a cairn node unchanged, so the names,
defaults and precedence are etcd's: when ``--config-file`` is given, flags and environment are
ignored (as etcd documents); otherwise a flag beats its ``ETCD_*`` variable, which beats the default.
cairn's own additions: ``plugins`` (which frontends/auth backends run, with their settings) and
``core-url`` (where the core process listens for frontends; by default an ipc socket in the data dir).
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

import orjson
import yaml

DEFAULT_PLUGINS: dict[str, dict[str, Any]] = {"grpc": {}, "rest": {}}


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


@dataclass(slots=True)
class NodeConfig:
    """Every setting a node reads; field names are etcd's keys with ``-`` as ``_``."""

    name: str = "default"
    data_dir: str = "data"
    listen_client_urls: str = "http://127.0.0.1:2379"
    advertise_client_urls: str = "http://127.0.0.1:2379"
    listen_peer_urls: str = "http://127.0.0.1:2380"
    initial_advertise_peer_urls: str = "http://127.0.0.1:2380"
    initial_cluster: str = ""
    initial_cluster_state: str = "new"
    initial_cluster_token: str = "etcd-cluster"
    heartbeat_interval: int = 100
    election_timeout: int = 1000
    max_request_bytes: int = 1572864
    max_txn_ops: int = 128
    quota_backend_bytes: int = 0
    snapshot_count: int = 100000
    log_level: str = "info"
    auth_token: str = "simple"
    auth_token_ttl: int = 300
    bcrypt_cost: int = 10
    core_url: str = ""
    plugins: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(DEFAULT_PLUGINS))

    def __post_init__(self) -> None:
        if not self.initial_cluster:
            self.initial_cluster = f"{self.name}={self.initial_advertise_peer_urls}"
        if not self.core_url:
            sock = os.path.abspath(os.path.join(self.data_dir, "core.sock"))
            # ipc paths are limited by sockaddr_un (~107 bytes); deep data dirs fall back to tcp.
            self.core_url = f"ipc://{sock}" if len(sock) < 100 else ""
        self.check()

    def check(self) -> None:
        """Refuse values etcd would refuse, with the key's name in the message."""
        if self.initial_cluster_state not in ("new", "existing"):
            raise ConfigError(
                f"initial-cluster-state must be 'new' or 'existing', not {self.initial_cluster_state!r}"
            )
        if self.heartbeat_interval <= 0 or self.election_timeout < 5 * self.heartbeat_interval:
            raise ConfigError("election-timeout must be at least 5 times heartbeat-interval (both > 0)")
        for key in ("max_request_bytes", "max_txn_ops"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key.replace('_', '-')} must be positive")
        if self.log_level not in ("debug", "info", "warn", "error", "panic", "fatal"):
            raise ConfigError(f"log-level {self.log_level!r} is not one of debug, info, warn, error")
        if not 4 <= self.bcrypt_cost <= 31:  # bcrypt's own bounds (etcd: bcrypt.MinCost..MaxCost)
            raise ConfigError(f"bcrypt-cost {self.bcrypt_cost} is not between 4 and 31")
        if self.auth_token.partition(",")[0] not in ("simple", "jwt"):
            raise ConfigError(f"auth-token {self.auth_token!r}: the token type must be simple or jwt")
        if self.name not in self.cluster_peers():
            raise ConfigError(f"initial-cluster has no entry for this member's name {self.name!r}")

    def cluster_peers(self) -> dict[str, list[str]]:
        """``initial-cluster`` as name -> peer URLs (a name may appear several times)."""
        peers: dict[str, list[str]] = {}
        for item in filter(None, (p.strip() for p in self.initial_cluster.split(","))):
            name, sep, url = item.partition("=")
            if not sep or not url:
                raise ConfigError(f"initial-cluster entry {item!r} is not name=url")
            peers.setdefault(name, []).append(url)
        return peers

    def member_ids(self) -> dict[str, int]:
        """Member ids derived like etcd's: a hash of the member's peer URLs and the cluster token."""
        return {
            name: member_id(urls, self.initial_cluster_token) for name, urls in self.cluster_peers().items()
        }

    @property
    def member_id(self) -> int:
        return self.member_ids()[self.name]

    @property
    def cluster_id(self) -> int:
        digest = hashlib.sha1(b"".join(i.to_bytes(8, "big") for i in sorted(self.member_ids().values())))
        return int.from_bytes(digest.digest()[:8], "big")

    def client_addresses(self) -> list[tuple[str, int]]:
        """``listen-client-urls`` as (host, port) pairs for the frontends to bind."""
        return [host_port(url, "listen-client-urls") for url in split_urls(self.listen_client_urls)]

    def to_json(self) -> bytes:
        return orjson.dumps({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_json(cls, data: bytes | str) -> NodeConfig:
        return cls(**orjson.loads(data))


def member_id(peer_urls: Sequence[str], token: str) -> int:
    digest = hashlib.sha1(("".join(sorted(peer_urls)) + token).encode())
    return int.from_bytes(digest.digest()[:8], "big") or 1


def split_urls(value: str) -> list[str]:
    return [u.strip() for u in value.split(",") if u.strip()]


def host_port(url: str, key: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
        raise ConfigError(f"{key}: {url!r} is not an http(s)://host:port URL")
    return parts.hostname, parts.port


_INT_KEYS = {f.name for f in fields(NodeConfig) if f.type == "int"}
_KEYS = {f.name for f in fields(NodeConfig)}


def _coerce(key: str, value: Any) -> Any:
    if key in _INT_KEYS:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key.replace('_', '-')}: {value!r} is not an integer") from None
    if key == "plugins":
        if not isinstance(value, Mapping):
            raise ConfigError("plugins must be a mapping of plugin name to settings")
        return {str(k): dict(v or {}) for k, v in value.items()}
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def from_mapping(values: Mapping[str, Any]) -> NodeConfig:
    """Build a config from etcd-style keys (``data-dir``), ignoring keys cairn does not know yet."""
    known = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        if key in _KEYS and value is not None:
            known[key] = _coerce(key, value)
    return NodeConfig(**known)


def load_file(path: str) -> NodeConfig:
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"config-file {path!r}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config-file {path!r} is not valid YAML: {e}") from None
    if not isinstance(values, Mapping):
        raise ConfigError(f"config-file {path!r} must hold a mapping of etcd config keys")
    return from_mapping(values)


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """The ``cairn`` command line: etcd's flags, ``ETCD_*`` variables, or ``--config-file``."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="cairn", description="cairn: an etcd-compatible key-value store node"
    )
    parser.add_argument(
        "--config-file", help="YAML file with etcd config keys (flags and ETCD_* are then ignored)"
    )
    for f in fields(NodeConfig):
        if f.name != "plugins":
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None)
    args = parser.parse_args(argv)
    config_file = args.config_file or environ.get("ETCD_CONFIG_FILE")
    if config_file:
        return load_file(config_file)
    values: dict[str, Any] = {}
    for f in fields(NodeConfig):
        env = environ.get("ETCD_" + f.name.upper())
        flag = getattr(args, f.name, None)
        if flag is not None:
            values[f.name] = flag
        elif env is not None:
            values[f.name] = orjson.loads(env) if f.name == "plugins" else env
    return from_mapping(values)
