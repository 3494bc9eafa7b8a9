"""GET /metrics: Prometheus text from one CollectorRegistry per daemon (tier 5).

Request counts and latencies are recorded as requests finish; everything else (runs by
status, nodes dispatched, events published, SSE subscribers) is read from the engine,
scheduler, bus and API when scraped, so there is nothing to keep in step. No tenant labels:
the numbers are the daemon's, and label values must not leak one tenant's names to another.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from .api import RUN_STATUSES, DaemonApi

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST


class _DaemonCollector(Collector):
    def __init__(self, api: DaemonApi) -> None:
        self._api = api

    def collect(self) -> Iterator[Metric]:
        api = self._api
        host = api.host
        tally: Tally[str] = Tally(run.status for run in host.engine.runs.values())
        runs = GaugeMetricFamily("nodehost_runs", "Runs known to the daemon, by status.",
                                 labels=["status"])
        for status in RUN_STATUSES:
            runs.add_metric([status], tally.get(status, 0))
        yield runs
        stats = host.scheduler.statistics()
        yield CounterMetricFamily("nodehost_nodes_dispatched",
                                  "Node attempts handed to an executor.",
                                  value=stats["dispatched"])
        yield GaugeMetricFamily("nodehost_nodes_running", "Node attempts running now.",
                                value=stats["running"])
        yield GaugeMetricFamily("nodehost_nodes_ready", "Nodes ready, waiting for a slot.",
                                value=stats["ready"])
        bus = host.bus
        yield CounterMetricFamily("nodehost_events_published",
                                  "Event envelopes published.", value=bus.published)
        yield GaugeMetricFamily("nodehost_event_id", "Id of the latest event envelope.",
                                value=host.engine.event_seq)
        yield GaugeMetricFamily("nodehost_sse_subscribers", "Open SSE event streams.",
                                value=api.sse_open)
        yield CounterMetricFamily(
            "nodehost_sse_dropped_subscribers",
            "SSE streams dropped because the client fell behind or stopped reading.",
            value=bus.dropped_subscribers + api.sse_stuck,
        )


class Metrics:
    """The metrics of one daemon."""

    def __init__(self, api: DaemonApi) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "nodehost_http_requests", "HTTP requests answered, by route and status.",
            ["method", "route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "nodehost_http_request_duration_seconds",
            "Time to answer an HTTP request (event streams excluded), by route.",
            ["method", "route"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.registry.register(_DaemonCollector(api))

    def observe(self, method: str, route: str, status: int, seconds: float | None) -> None:
        self.requests.labels(method, route, str(status)).inc()
        if seconds is not None:
            self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
