"""``cairn``: run a node (etcd's flags, ``ETCD_*`` variables or ``--config-file``)."""

from __future__ import annotations

import sys

from node.config import ConfigError, parse_args
from node.logging import setup_logging
from node.supervisor import Supervisor


def main() -> None:
    try:
        config = parse_args()
    except ConfigError as e:
        print(f"cairn: {e}", file=sys.stderr)
        sys.exit(2)
    setup_logging(config.log_level, "supervisor")
    sys.exit(Supervisor(config).run())


if __name__ == "__main__":
    main()
