"""Prometheus metrics, one registry per app (no process-global state).

prometheus_client does the exposition format (escaping, histogram buckets, ``_total``
naming) correctly, which is the part worth not hand-writing. Counters are incremented where
things happen (mint, consume); gauges that mirror live state (sessions, agents, webhook
verdicts kept by their services) are read at scrape time by :class:`_LiveState`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.minted = Counter(
            "voice_tokens_minted", "Tokens minted", ["channel", "path"], registry=self.registry
        )
        self.consumed = Counter(
            "voice_tokens_consumed", "Tokens consumed", ["channel"], registry=self.registry
        )
        self.refused = Counter(
            "voice_tokens_refused",
            "Mints and consumes refused, by error code",
            ["stage", "code"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "voice_rate_limit_hits", "Requests refused by a rate limit", ["bucket"], registry=self.registry
        )
        self.store_latency = Histogram(
            "voice_store_latency_seconds",
            "Store round trip (readiness pings and the mint path's token write)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self._minted: dict[tuple[str, str], Counter] = {}
        self._consumed: dict[str, Counter] = {}

    def count_mint(self, channel: str, path: str) -> None:
        """``minted.labels(channel, path).inc()``, without the label lookup on every mint."""
        child = self._minted.get((channel, path))
        if child is None:
            child = self._minted[(channel, path)] = self.minted.labels(channel, path)
        child.inc()

    def count_consume(self, channel: str) -> None:
        child = self._consumed.get(channel)
        if child is None:
            child = self._consumed[channel] = self.consumed.labels(channel)
        child.inc()

    def watch(self, live: Callable[[], Mapping[str, Iterable[tuple[Mapping[str, str], float]]]]) -> None:
        """Expose live values: ``live()`` returns {metric name: [(labels, value), ...]}."""
        self.registry.register(_LiveState(live))

    def render(self) -> bytes:
        return generate_latest(self.registry)


# name -> (kind, help, label names)
LIVE_METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "voice_sessions_live": ("gauge", "Live sessions on this node", ("transport",)),
    "voice_agents_online": ("gauge", "Agents whose /client socket is on this node", ()),
    "voice_sdk_connections": ("gauge", "Open /client sockets on this node", ()),
    "voice_draining": ("gauge", "1 while this node drains", ()),
    "voice_webhook_verdicts": ("counter", "WhatsApp webhook verdicts", ("verdict",)),
}


class _LiveState(Collector):
    def __init__(self, live: Callable[[], Mapping[str, Iterable[tuple[Mapping[str, str], float]]]]) -> None:
        self._live = live

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        values = self._live()
        for name, (kind, help_text, labels) in LIVE_METRICS.items():
            family: GaugeMetricFamily | CounterMetricFamily = (
                GaugeMetricFamily(name, help_text, labels=list(labels))
                if kind == "gauge"
                else CounterMetricFamily(name, help_text, labels=list(labels))
            )
            for label_values, value in values.get(name, ()):
                family.add_metric([label_values[label] for label in labels], value)
            yield family
