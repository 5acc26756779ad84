"""etcd's JSON gateway API, /health, /version and /metrics (see docs/rest.md)."""
