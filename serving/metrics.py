"""Prometheus metrics of one server instance (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.partial_latency = Histogram(
            "deepspeech_partial_latency_seconds",
            "From the arrival of a stream's oldest unprocessed audio to its partial result being handed to the "
            "connection", buckets=LATENCY_BUCKETS, registry=r)
        self.final_latency = Histogram(
            "deepspeech_final_latency_seconds", "From the end of a stream (or an upload) to its final result",
            buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("deepspeech_batch_size", "Streams per batched forward pass",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.step_seconds = Histogram("deepspeech_step_seconds", "Time of one batched step (features to log-probs)",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.active_streams = Gauge("deepspeech_active_streams", "Open streams (WebSocket and uploads)", registry=r)
        self.rejections = Counter("deepspeech_rejections_total", "Refused or aborted requests and streams",
                                  ["reason"], registry=r)
        self.requests = Counter("deepspeech_requests_total", "Finished HTTP requests and streams",
                                ["endpoint", "status"], registry=r)
        self.audio_seconds = Counter("deepspeech_audio_seconds_total", "Audio processed", registry=r)
        self.warm_up_seconds = Gauge("deepspeech_warm_up_seconds",
                                     "The engine's warm-up step before the server accepted connections", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
