"""Prometheus metrics of one server, in a registry of its own (several apps in one process do not collide)."""

from __future__ import annotations


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("peftkit_requests_total", "HTTP requests answered", ["endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("peftkit_request_seconds", "Time to answer a request", ["endpoint"],
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60),
                                 registry=self.registry)
        self.batch_rows = Histogram("peftkit_batch_rows", "Texts per forward pass", ["kind"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.mixed = Counter("peftkit_mixed_adapter_batches_total",
                             "Forward passes whose rows went through more than one adapter", registry=self.registry)
        self.queue_depth = Gauge("peftkit_queue_depth", "Texts waiting for the worker", registry=self.registry)
        self.errors = Counter("peftkit_errors_total", "Requests answered with an error", ["kind"],
                              registry=self.registry)

    def answered(self) -> dict[str, int]:
        """Requests answered so far, by status ("200": 41, ...), over every endpoint."""
        counts: dict[str, int] = {}
        for family in self.requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    status = sample.labels["status"]
                    counts[status] = counts.get(status, 0) + int(sample.value)
        return counts

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
