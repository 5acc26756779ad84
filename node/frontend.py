"""The frontend process: every enabled frontend plugin on one asyncio (uvloop) event loop.

Started by the supervisor as ``python -m node.frontend``; all frontends share one
:class:`node.api.Client` to the core, so their requests are batched together.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal

import structlog

from node.api import Client
from node.config import NodeConfig
from node.logging import setup_logging
from node.plugins import frontends
from node.supervisor import EXIT_FATAL

log = structlog.get_logger()


async def serve(config: NodeConfig) -> None:
    client = Client(config.core_url)
    await client.start()
    running = frontends(config)
    try:
        for frontend in running:
            await frontend.start(client)
    except Exception as e:  # a port in use, a bad plugin setting: restarting will not help
        log.error("frontend_start_failed", error=str(e))
        raise SystemExit(EXIT_FATAL) from e
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # what startup made (modules, protobuf descriptors, grpc) lives as long as the process: out of
    # the collector's sight, so full collections under load walk only the objects requests make
    gc.freeze()
    log.info("frontends_serving", frontends=[f.name for f in running])
    await stop.wait()
    for frontend in running:
        await frontend.stop(grace=2.0)
    await client.close()
    log.info("frontends_stopped")


def main() -> None:
    config = NodeConfig.from_json(os.environ["CAIRN_CONFIG"])
    setup_logging(config.log_level, "frontend")
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
