"""Prometheus metrics with etcd's names, shared by the core's actors and the frontends.

The core and the frontend are separate processes, so the figures are kept in
``prometheus_client``'s multiprocess mode: when ``PROMETHEUS_MULTIPROC_DIR`` is set (the supervisor
sets it to a directory under the data dir, emptied at start, for both children), every process
writes its values to memory-mapped files there and the REST frontend's ``/metrics`` reads them all
back with ``MultiProcessCollector``. Without the variable each process keeps its own figures.

The metric objects are created on first use (:func:`core`, :func:`frontend`), not at import, so
each process only creates the ones it updates: a frontend never writes a zero ``has_leader``.
Gauges use ``livemostrecent``: the value the live process wrote last; a dead process's files
stop counting once the supervisor calls ``prometheus_client.multiprocess.mark_process_dead(pid)``.

Per-request figures cost a few microseconds each: update them per batch or per turn where the
actor can (one ``inc(n)`` for a turn's n committed entries, not n calls).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, values

# etcd's buckets for disk latencies: 1 ms doubling to ~8 s (prometheus.ExponentialBuckets(0.001, 2, 14))
DISK_BUCKETS = tuple(0.001 * 2**i for i in range(14))
# go-grpc-prometheus' default handling-time buckets (what etcd's --metrics=extensive exports)
HANDLING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HASH_BUCKETS = tuple(0.01 * 2**i for i in range(15))  # etcd's for the mvcc hashes

GAUGE_MODE = "livemostrecent"

_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


def _cached_pid() -> int:
    return _pid


# Multiprocess values call their process-identifier function on every update to notice a fork;
# the default, os.getpid, is a real system call (~1 µs in this VM, ~7% of the core's CPU under a
# put load). A pid kept per process and refreshed in forked children gives the same guarantee.
if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
    os.register_at_fork(after_in_child=_refresh_pid)
    values.ValueClass = values.MultiProcessValue(process_identifier=_cached_pid)


@dataclass(frozen=True, slots=True)
class CoreMetrics:
    """What the core's actors measure; the comment on each says who updates it and when."""

    has_leader: Gauge  # raft: set(1/0) whenever the known leader changes
    is_leader: Gauge  # raft: set(1/0) when this member becomes / stops being leader
    leader_changes: Counter  # raft: inc() when a new leader is seen (term with a different leader)
    proposals_committed: Gauge  # raft: set(commit index) after each Ready
    proposals_applied: Gauge  # storage: set(applied index) after each applied turn
    proposals_pending: Gauge  # raft (or session): set(proposals waiting to commit) per turn
    proposals_failed: Counter  # session: inc() when a proposal fails (leader lost, timeout, dropped)
    wal_fsync: Histogram  # raft log: observe(seconds) around each fsync of the log
    backend_commit: Histogram  # storage: observe(seconds) around each RocksDB WriteBatch write
    db_size: Gauge  # storage: set(bytes) of the kv database on disk, once a second with the WAL sync
    db_size_in_use: Gauge  # storage: set(live data bytes), with db_size
    keys_total: Gauge  # storage: set(number of live keys) per applied turn
    put_total: Counter  # storage: inc(n) puts applied (etcd_mvcc_put_total)
    delete_total: Counter  # storage: inc(n) deletes applied (etcd_mvcc_delete_total)
    range_total: Counter  # storage: inc(n) ranges served (etcd_mvcc_range_total)
    txn_total: Counter  # storage: inc(n) txns applied (etcd_mvcc_txn_total)
    slow_apply: Counter  # storage: inc() when applying one turn took more than 100 ms
    read_indexes_failed: (
        Counter  # raft: inc() when a ReadIndex round fails (etcd_server_read_indexes_failed_total)
    )
    quota_backend_bytes: Gauge  # session: set(the space quota in bytes) at start
    defrag: Histogram  # storage's defragment thread: observe(seconds) around each run
    hash: Histogram  # storage: observe(seconds) around each Maintenance.Hash
    hash_rev: Histogram  # storage: observe(seconds) around each Maintenance.HashKV


@functools.cache
def core() -> CoreMetrics:
    """The core's metrics, created once per process (call it from the core only)."""
    disable_created_metrics()  # etcd (Go's client) exports no *_created series
    return CoreMetrics(
        has_leader=Gauge(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            multiprocess_mode=GAUGE_MODE,
        ),
        is_leader=Gauge(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            multiprocess_mode=GAUGE_MODE,
        ),
        leader_changes=Counter("etcd_server_leader_changes_seen", "The number of leader changes seen."),
        proposals_committed=Gauge(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            multiprocess_mode=GAUGE_MODE,
        ),
        proposals_applied=Gauge(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            multiprocess_mode=GAUGE_MODE,
        ),
        proposals_pending=Gauge(
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            multiprocess_mode=GAUGE_MODE,
        ),
        proposals_failed=Counter(
            "etcd_server_proposals_failed", "The total number of failed proposals seen."
        ),
        wal_fsync=Histogram(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            buckets=DISK_BUCKETS,
        ),
        backend_commit=Histogram(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
            buckets=DISK_BUCKETS,
        ),
        db_size=Gauge(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            multiprocess_mode=GAUGE_MODE,
        ),
        db_size_in_use=Gauge(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            multiprocess_mode=GAUGE_MODE,
        ),
        keys_total=Gauge(
            "etcd_debugging_mvcc_keys_total", "Total number of keys.", multiprocess_mode=GAUGE_MODE
        ),
        put_total=Counter("etcd_mvcc_put", "Total number of puts seen by this member."),
        delete_total=Counter("etcd_mvcc_delete", "Total number of deletes seen by this member."),
        range_total=Counter("etcd_mvcc_range", "Total number of ranges seen by this member."),
        txn_total=Counter("etcd_mvcc_txn", "Total number of txns seen by this member."),
        slow_apply=Counter(
            "etcd_server_slow_apply",
            "The total number of slow apply requests (likely overloaded from slow disk).",
        ),
        read_indexes_failed=Counter(
            "etcd_server_read_indexes_failed", "The total number of failed read indexes seen."
        ),
        quota_backend_bytes=Gauge(
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
            multiprocess_mode=GAUGE_MODE,
        ),
        defrag=Histogram(
            "etcd_disk_backend_defrag_duration_seconds",
            "The latency distribution of backend defragmentation.",
            buckets=tuple(0.1 * 2**i for i in range(13)),  # etcd's: 100 ms doubling to ~7 min
        ),
        hash=Histogram(
            "etcd_mvcc_hash_duration_seconds",
            "The latency distribution of storage hash operation.",
            buckets=HASH_BUCKETS,
        ),
        hash_rev=Histogram(
            "etcd_mvcc_hash_rev_duration_seconds",
            "The latency distribution of storage hash by revision operation.",
            buckets=HASH_BUCKETS,
        ),
    )


class FrontendMetrics:
    """Per-RPC figures with go-grpc-prometheus' names and labels, as etcd exports them.

    The JSON gateway counts under the gRPC method it stands for (etcd's gateway calls its own gRPC
    server, so its requests show up there too). ``started``/``handled`` look their labelled child
    up in a dict, not through ``labels()``, to keep the per-request cost near a microsecond.
    """

    def __init__(self) -> None:
        self.started_total = Counter(
            "grpc_server_started",
            "Total number of RPCs started on the server.",
            ["grpc_type", "grpc_service", "grpc_method"],
        )
        self.handled_total = Counter(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            ["grpc_type", "grpc_service", "grpc_method"],
            buckets=HANDLING_BUCKETS,
        )
        self.health_success = Counter(
            "etcd_server_health_success", "The total number of successful health checks"
        )
        self.health_failures = Counter(
            "etcd_server_health_failures", "The total number of failed health checks"
        )
        self.version = Gauge(
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            ["server_version"],
            multiprocess_mode=GAUGE_MODE,
        )
        self._started: dict[tuple[str, str, str], Counter] = {}
        self._handled: dict[tuple[str, str, str, str], Counter] = {}
        self._latency: dict[tuple[str, str, str], Histogram] = {}

    def started(self, grpc_type: str, service: str, method: str) -> None:
        key = (grpc_type, service, method)
        child = self._started.get(key)
        if child is None:
            child = self._started[key] = self.started_total.labels(*key)
        child.inc()

    def handled(self, grpc_type: str, service: str, method: str, code: str, seconds: float) -> None:
        """One finished RPC: ``code`` is the gRPC status name (``OK``, ``InvalidArgument``, ...)."""
        key = (grpc_type, service, method, code)
        child = self._handled.get(key)
        if child is None:
            child = self._handled[key] = self.handled_total.labels(*key)
        child.inc()
        lkey = (grpc_type, service, method)
        latency = self._latency.get(lkey)
        if latency is None:
            latency = self._latency[lkey] = self.handling_seconds.labels(*lkey)
        latency.observe(seconds)


@functools.cache
def frontend() -> FrontendMetrics:
    """The frontend process's metrics, created once (shared by every frontend plugin)."""
    disable_created_metrics()
    return FrontendMetrics()


# gRPC status names as go-grpc-prometheus writes them in grpc_code (indexed by the numeric code)
GRPC_CODE_NAMES = (
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
)
