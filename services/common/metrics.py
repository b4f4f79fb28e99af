"""Prometheus metrics of every service, served on MAILBLAST_METRICS_BIND at /metrics.

One registry per process (a pod runs one service); every family has a `service` label, so that the
processes of a test, which run every service at once, still tell theirs apart. Counters count what was
committed: a delivery after its ledger write, import rows after their chunk's transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES = Counter(
    "mailblast_messages_total",
    "Delivery outcomes written to the sender's ledger, by kind (campaign, transactional) and outcome",
    ["service", "kind", "outcome"],
    registry=REGISTRY,
)
SMTP_REPLIES = Counter(
    "mailblast_smtp_replies_total",
    "The receiving servers' last SMTP replies, by class (2xx, 4xx, 5xx; none: no reply, e.g. no connection)",
    ["service", "reply_class"],
    registry=REGISTRY,
)
BOUNCES = Counter(
    "mailblast_bounces_total",
    "Bounces and complaints bounce announced, by kind (hard, soft, complaint) and source (smtp, dsn)",
    ["service", "kind", "source"],
    registry=REGISTRY,
)
CONSUMER_PENDING = Gauge(
    "mailblast_consumer_pending_messages",
    "Messages waiting for a JetStream durable consumer beyond those fetched, as of its last fetch",
    ["service", "durable"],
    registry=REGISTRY,
)
MESSAGES_CONSUMED = Counter(
    "mailblast_consumer_messages_total",
    "Messages a durable consumer settled, by decision (ack, nak, term, dead_letter, error)",
    ["service", "durable", "decision"],
    registry=REGISTRY,
)
FANOUT_BATCHES = Counter(
    "mailblast_fanout_batches_total",
    "SendBatches the campaigns fan-out published",
    ["service"],
    registry=REGISTRY,
)
FANOUT_RECIPIENTS = Counter(
    "mailblast_fanout_recipients_total",
    "Recipients in the SendBatches the campaigns fan-out published",
    ["service"],
    registry=REGISTRY,
)
IMPORT_ROWS = Counter(
    "mailblast_import_rows_total",
    "CSV import rows committed, by result (added, updated, skipped, failed)",
    ["service", "result"],
    registry=REGISTRY,
)
GRPC_SECONDS = Histogram(
    "mailblast_grpc_server_handling_seconds",
    "Time to answer a gRPC call, by method and status code",
    ["service", "method", "code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
GRPC_ERRORS = Counter(
    "mailblast_grpc_server_errors_total",
    "gRPC calls answered with a status other than OK, by method and code",
    ["service", "method", "code"],
    registry=REGISTRY,
)


# Outcomes that only an attempt produces: without one, such an outcome is a final row reported again.
_ATTEMPTED = frozenset({"sent", "deferred", "rejected"})


def count_outcomes(outcomes: Iterable) -> None:
    """Count the delivery outcomes the sender committed, by kind and status, and each attempt's SMTP reply class.

    A redelivered batch reports its final rows again (attempt not counted): those are not counted twice.
    An expiry or a withheld message (suppressed, erased) counts as the decision it is.
    """
    for outcome in outcomes:
        status = str(outcome.status)
        if not outcome.counts_attempt and status in _ATTEMPTED:
            continue
        kind = "transactional" if outcome.message_key else "campaign"
        MESSAGES.labels("sender", kind, status).inc()
        if outcome.counts_attempt:
            SMTP_REPLIES.labels("sender", reply_class(outcome.smtp_code)).inc()


def reply_class(code: int) -> str:
    """2xx, 4xx or 5xx for an SMTP reply code; none when there was no reply (code 0)."""
    return f"{code // 100}xx" if 200 <= code < 600 else "none"


class _Pools(Collector):
    """The services' database pools: connections open, idle and in use, and requests waiting for one."""

    def __init__(self) -> None:
        self._pools: dict[str, object] = {}
        self._lock = threading.Lock()

    def watch(self, service: str, pool: object) -> None:
        with self._lock:
            self._pools[service] = pool

    def forget(self, service: str, pool: object) -> None:
        with self._lock:
            if self._pools.get(service) is pool:
                del self._pools[service]

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        size = GaugeMetricFamily("mailblast_db_pool_connections", "Connections the pool holds", labels=["service"])
        idle = GaugeMetricFamily("mailblast_db_pool_idle_connections", "Connections free to lend", labels=["service"])
        used = GaugeMetricFamily("mailblast_db_pool_used_connections", "Connections lent out", labels=["service"])
        limit = GaugeMetricFamily("mailblast_db_pool_max_connections", "The pool's maximum size", labels=["service"])
        waiting = GaugeMetricFamily(
            "mailblast_db_pool_waiting_requests", "Requests waiting for a connection", labels=["service"]
        )
        with self._lock:
            pools = dict(self._pools)
        for service, pool in pools.items():
            stats = pool.get_stats()  # type: ignore[attr-defined]
            held, free = stats.get("pool_size", 0), stats.get("pool_available", 0)
            size.add_metric([service], held)
            idle.add_metric([service], free)
            used.add_metric([service], held - free)
            limit.add_metric([service], pool.max_size)  # type: ignore[attr-defined]
            waiting.add_metric([service], stats.get("requests_waiting", 0))
        return [size, idle, used, limit, waiting]


POOLS = _Pools()
REGISTRY.register(POOLS)


class MetricsServer:
    """The /metrics listener of one process (prometheus-client's WSGI server in a thread)."""

    def __init__(self, server: WSGIServer | None, thread: threading.Thread | None) -> None:
        self._server = server
        self._thread = thread
        self.port = server.server_port if server is not None else 0

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(5)


def serve(bind: str) -> MetricsServer:
    """Serve /metrics on `bind` ("host:port", port 0 for any); an empty bind serves nothing."""
    if not bind:
        return MetricsServer(None, None)
    host, _, port = bind.rpartition(":")
    # bandit B104: a bind without a host means every interface, as the operator's MAILBLAST_METRICS_BIND chose
    server, thread = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=REGISTRY)  # nosec B104
    return MetricsServer(server, thread)
