"""The ingress's Prometheus metrics, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0,
)
_ENQUEUE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)


class Metrics:
    """Turns by tier, time to first token, relay events, enqueue time, errors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.turns = Counter(
            "dispatcher_turns", "Turns admitted, by tier and endpoint",
            ["tier", "endpoint"], registry=self.registry,
        )
        self.ttft = Histogram(
            "dispatcher_ttft_seconds",
            "Time from a turn's arrival at the ingress to its first token leaving it",
            ["tier"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.relay_events = Counter(
            "dispatcher_relay_events", "Turn events relayed to clients, by type and source "
            "(pubsub: live; buffer: recovered or replayed; ingress: made by the ingress)",
            ["type", "source"], registry=self.registry,
        )
        self.enqueue = Histogram(
            "dispatcher_enqueue_seconds", "Time to hand a turn to the broker",
            buckets=_ENQUEUE_BUCKETS, registry=self.registry,
        )
        self.turn_errors = Counter(
            "dispatcher_turn_errors", "Turns that ended with an error event, by code",
            ["code"], registry=self.registry,
        )
        self.disconnects = Counter(
            "dispatcher_client_disconnects",
            "Clients that went away before their turn ended (the turn is cancelled)",
            registry=self.registry,
        )
        self.active_streams = Gauge(
            "dispatcher_active_relays", "Turns being relayed to a client now",
            registry=self.registry,
        )
        self.policy_reloads = Counter(
            "dispatcher_policy_reloads", "Policy reloads, by outcome",
            ["outcome"], registry=self.registry,
        )

    def count_event(self, kind: str, source: str) -> None:
        self.relay_events.labels(kind, source).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
