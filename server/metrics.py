"""Prometheus metrics, one registry per app (no process-global state).

prometheus_client does the exposition format (escaping, histogram buckets, ``_total``
naming) correctly, which is the part worth not hand-writing. Counters are incremented where
things happen (mint, consume); gauges that mirror live state (sessions, agents, webhook
verdicts kept by their services) are read at scrape time by :class:`_LiveState`.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# No `<name>_created` series beside every counter and histogram: nobody asked for them, they
# double the lines a scrape carries (the library's switch is process-wide; this is its only user).
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
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
            "Store round trip (readiness pings and each batch of token commands)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        # The two counters on every mint and consume: plain ints under the event loop's single
        # thread (a prometheus_client Counter takes a lock per increment), exposed at scrape time.
        self.minted: collections.Counter[tuple[str, str]] = collections.Counter()
        self.consumed: collections.Counter[str] = collections.Counter()
        self.registry.register(_Hot(self))

    def count_mint(self, channel: str, path: str) -> None:
        self.minted[(channel, path)] += 1

    def count_consume(self, channel: str) -> None:
        self.consumed[channel] += 1

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
    "voice_streams_live": ("gauge", "Open /ws/stream sockets on this node", ()),
    "voice_stream_events_dropped": (
        "counter",
        "Events this node could not write to the stream log (queue full or store down)",
        (),
    ),
}


class _Hot(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        minted = CounterMetricFamily("voice_tokens_minted", "Tokens minted", labels=["channel", "path"])
        for (channel, path), count in sorted(self._metrics.minted.items()):
            minted.add_metric([channel, path], count)
        consumed = CounterMetricFamily("voice_tokens_consumed", "Tokens consumed", labels=["channel"])
        for channel, count in sorted(self._metrics.consumed.items()):
            consumed.add_metric([channel], count)
        return [minted, consumed]


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
