"""cairnctl's subcommands over cairn's native ZeroMQ protocol (``--zmq URL``): the queue recipe and
a watch that survives server restarts. The rest of cairnctl speaks gRPC, like any etcd tool."""

from __future__ import annotations

import argparse
import logging
import sys

import structlog

from actors.curve import read_secret
from node.client import DEFAULT_URL, Client
from node.recipes import Queue

COMMANDS = frozenset({"queue", "watch"})
EVENT_NAMES = {0: "PUT", 1: "DELETE"}


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    queue = sub.add_parser("queue", help="a distributed FIFO queue under a key prefix (native protocol)")
    actions = queue.add_subparsers(dest="action", required=True)
    push = actions.add_parser("push", help="append a value")
    push.add_argument("prefix")
    push.add_argument("value")
    pop = actions.add_parser("pop", help="remove and print the oldest value, waiting for one")
    pop.add_argument("prefix")
    pop.add_argument("--wait", type=float, default=None, help="give up after this many seconds")
    size = actions.add_parser("size", help="how many values are queued")
    size.add_argument("prefix")
    watch = sub.add_parser("watch", help="print changes as they happen, resuming across server restarts")
    watch.add_argument("key")
    watch.add_argument("--prefix", action="store_true")
    watch.add_argument("--rev", type=int, default=0, help="start at this revision (history first)")
    watch.add_argument("--prev-kv", action="store_true")


def run(args: argparse.Namespace) -> int:
    # the client logs reconnects; on a terminal they belong on stderr, below the output
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),  # cairnctl says what failed
    )
    secret = None
    if args.curve_secret_key_file:
        secret = read_secret(args.curve_secret_key_file)[1]
    curve_keys = {"server_key": args.curve_server_key, "secret_key": secret}
    with Client(args.zmq or DEFAULT_URL, timeout=args.timeout, **curve_keys) as client:
        if args.command == "queue":
            return run_queue(Queue(client, args.prefix), args)
        return run_watch(client, args)


def run_queue(queue: Queue, args: argparse.Namespace) -> int:
    if args.action == "push":
        print(queue.push(args.value).decode(errors="backslashreplace"))
    elif args.action == "size":
        print(queue.size())
    else:
        try:
            value = queue.pop(timeout=args.wait)
        except TimeoutError:
            print(f"cairnctl: queue {args.prefix} stayed empty for {args.wait:g} s", file=sys.stderr)
            return 1
        sys.stdout.buffer.write(value + b"\n")
    return 0


def run_watch(client: Client, args: argparse.Namespace) -> int:
    with client.watch(args.key, prefix=args.prefix, start_revision=args.rev, prev_kv=args.prev_kv) as watch:
        try:
            for event in watch:
                kv = event.kv
                line = f"{EVENT_NAMES.get(event.type, event.type)} {kv.key.decode(errors='backslashreplace')}"
                if event.type == 0:
                    line += " " + kv.value.decode(errors="backslashreplace")
                print(f"{line}  (revision {kv.mod_revision})", flush=True)
        except KeyboardInterrupt:
            pass
    return 0
