"""Prometheus metrics of the watcher, in one place so their names stay consistent.

Every metric carries the ``cluster`` label: one process (or one test run) may watch several
clusters, and the default registry is process-wide.
"""

from __future__ import annotations

import prometheus_client

EVENTS = prometheus_client.Counter(
    "navigator_watcher_events_total",
    "Watch events received, by kind and type (ADDED, MODIFIED, DELETED, BOOKMARK, LISTED).",
    ["cluster", "kind", "type"],
)
WRITES = prometheus_client.Counter(
    "navigator_watcher_writes_total",
    "Keys written to etcd, by operation (put, delete).",
    ["cluster", "op"],
)
TRANSACTIONS = prometheus_client.Counter(
    "navigator_watcher_flushes_total",
    "Batches written to etcd (each one or more transactions).",
    ["cluster"],
)
SKIPPED = prometheus_client.Counter(
    "navigator_watcher_skipped_unchanged_total",
    "Upserts not written because etcd already holds the same bytes.",
    ["cluster"],
)
CONVERSION_ERRORS = prometheus_client.Counter(
    "navigator_watcher_conversion_errors_total",
    "Malformed Kubernetes objects skipped (their last good value is kept).",
    ["cluster", "kind"],
)
RELISTS = prometheus_client.Counter(
    "navigator_watcher_relists_total",
    "Full lists after the first one (410 Gone, or a kind that became served).",
    ["cluster", "kind"],
)
SYNCED = prometheus_client.Gauge(
    "navigator_watcher_synced",
    "1 once the cluster's synced marker is written.",
    ["cluster"],
)
API_REACHABLE = prometheus_client.Gauge(
    "navigator_watcher_api_reachable",
    "1 while the cluster's API server answers.",
    ["cluster"],
)
ETCD_ERRORS = prometheus_client.Counter(
    "navigator_watcher_etcd_errors_total",
    "Failed etcd writes (retried; nothing pending is lost).",
    ["cluster"],
)
STALE_SECONDS = prometheus_client.Gauge(
    "navigator_watcher_stale_seconds",
    "How long the cluster's API server has not answered (0 while it answers); its last state "
    "is kept and served meanwhile.",
    ["cluster"],
)
LEADING = prometheus_client.Gauge(
    "navigator_watcher_leading",
    "1 while this replica is the one writing the cluster's state.",
    ["cluster"],
)
