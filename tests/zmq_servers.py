"""cairn nodes with the native ZeroMQ frontend enabled, for the test_zmq* and test_queue* files."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from servers import Server, free_port


class ZmqNode:
    """A started cairn node whose ``zmq`` plugin listens on ``url`` (gRPC and REST as usual)."""

    def __init__(self, base: Path, more_plugins: dict | None = None, **settings: object) -> None:
        self.url = f"tcp://127.0.0.1:{free_port()}"
        plugins = {"grpc": {}, "rest": {}, "zmq": {"listen": self.url, **settings}, **(more_plugins or {})}
        self.server = Server("cairn", base, env={"ETCD_PLUGINS": json.dumps(plugins)}, ready_timeout=60.0)

    def child_pid(self, module: str) -> int:
        """The pid of the supervisor's child running ``python -m MODULE``."""
        for task in Path(f"/proc/{self.server.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for pid in (task / "children").read_text().split():
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    if module.encode() in argv:
                        return int(pid)
        raise LookupError(f"no child running {module}")
