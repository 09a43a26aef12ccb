"""`GET /metrics`: the node's figures in the Prometheus text format, for its operators (a local
administrator's bearer token). The snapshot comes from the application layer
(exchange.service.metrics); this module formats it with `prometheus-client` and adds what it
counts itself: HTTP requests by route, method and status class, their durations, and the
process's CPU and memory. Each application keeps its own registry, so several nodes in one
process (tests, the federation simulator) do not mix their figures."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from exchange.http.appkeys import SERVICE
from exchange.node.client_api import current_user
from exchange.service.metrics import MetricsSnapshot, PeerFigures

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class HttpFigures:
    """Requests the node answered, counted per route pattern (never per path: bounded labels)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "exchange_http_requests",
            "Requests answered, by route pattern, method and status class",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "exchange_http_request_duration_seconds",
            "Time to answer a request (to the start of a streamed answer), by route pattern",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)


HTTP_FIGURES = web.AppKey("http_figures", HttpFigures)


def _route(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else "(unmatched)"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request (outermost, so refusals and errors count too)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        figures = request.app[HTTP_FIGURES]
        route = _route(request)
        figures.requests.labels(route, request.method, f"{status // 100}xx").inc()
        figures.seconds.labels(route).observe(time.perf_counter() - started)


class _Snapshot(Collector):
    def __init__(self, s: MetricsSnapshot) -> None:
        self.s = s

    def collect(self) -> Iterable[Metric]:
        s = self.s
        per_peer: list[tuple[str, str, Callable[[PeerFigures], float]]] = [
            ("exchange_outbox_queued", "Items queued for a partner", lambda p: p.queued),
            ("exchange_outbox_in_flight", "Items sent to a partner and not yet receipted", lambda p: p.in_flight),
            ("exchange_outbox_delivered", "Items delivered to a partner since the node started", lambda p: p.delivered),
            ("exchange_peer_failures", "Failed sends to a partner in a row", lambda p: p.failures),
            (
                "exchange_peer_backoff_seconds",
                "Seconds until the next try to a partner (0: none)",
                lambda p: p.backoff_seconds,
            ),
            (
                "exchange_peer_pull_hold_seconds",
                "Seconds until pushes to a partner resume: it is being served full catch-up pages (0: none)",
                lambda p: p.pull_hold_seconds,
            ),
        ]
        for name, text, value in per_peer:
            g = GaugeMetricFamily(name, text, labels=["peer"])
            for p in s.peers:
                g.add_metric([p.peer], float(value(p)))
            yield g
        g = GaugeMetricFamily(
            "exchange_peer_last_success_age_seconds", "Seconds since the last delivery to a partner", labels=["peer"]
        )
        for p in s.peers:
            if p.last_success_age is not None:
                g.add_metric([p.peer], p.last_success_age)
        yield g
        yield GaugeMetricFamily("exchange_audit_log_entries", "Entries in this node's audit log", value=s.audit_entries)
        yield GaugeMetricFamily(
            "exchange_audit_checkpoint_size", "Size of the latest signed checkpoint", value=s.checkpoint_size
        )
        if s.checkpoint_age is not None:
            yield GaugeMetricFamily(
                "exchange_audit_checkpoint_age_seconds",
                "Seconds since the latest checkpoint was signed",
                value=s.checkpoint_age,
            )
        size = GaugeMetricFamily(
            "exchange_audit_cosigned_size", "Largest size of our log a witness co-signed", labels=["witness"]
        )
        age = GaugeMetricFamily(
            "exchange_audit_cosigned_age_seconds",
            "Seconds since the newest checkpoint a witness co-signed was signed",
            labels=["witness"],
        )
        for w in s.witnesses:
            size.add_metric([w.witness], float(w.cosigned_size))
            if w.last_cosigned_age is not None:
                age.add_metric([w.witness], w.last_cosigned_age)
        yield size
        yield age
        failures = CounterMetricFamily(
            "exchange_audit_witnessing_failures",
            "Failed witnessing exchanges with a partner since the process started: pulls of its log, "
            "pushes of ours, by how they failed",
            labels=["partner", "direction", "kind"],
        )
        for (partner, direction, kind), count in sorted(s.witnessing_failures.items()):
            failures.add_metric([partner, direction, kind], float(count))
        yield failures
        g = GaugeMetricFamily("exchange_bulletins_stored", "Bulletins this node holds, per channel", labels=["channel"])
        for channel, count in sorted(s.bulletins.items()):
            g.add_metric([channel], float(count))
        yield g
        yield GaugeMetricFamily(
            "exchange_roster_version", "Version of the roster the node runs on", value=s.roster_version
        )
        if s.roster_expires is not None:
            yield GaugeMetricFamily(
                "exchange_roster_expiry_timestamp_seconds",
                "When the held roster expires (Unix time)",
                value=s.roster_expires,
            )
        yield GaugeMetricFamily(
            "exchange_roster_equivocations",
            "Roster versions this node found signed twice by the authority (a fork: alert)",
            value=s.roster_equivocations,
        )


async def metrics(request: web.Request) -> web.Response:
    """The node's figures, for a local administrator."""
    user = await current_user(request)
    user.require("admin")
    service = request.app[SERVICE]
    snapshot = await service.metrics.snapshot(service.audit.witness.my_witnesses())  # per designated witness
    registry = CollectorRegistry()
    registry.register(_Snapshot(snapshot))
    body = generate_latest(registry) + generate_latest(request.app[HTTP_FIGURES].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def routes() -> list[web.RouteDef]:
    return [web.get("/metrics", metrics)]
