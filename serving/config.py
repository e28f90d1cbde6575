"""Server settings: one frozen dataclass, defaults safe for a single machine (loopback only, bounded everything)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # loopback unless the operator asks for more
    port: int = 8000
    device: str = "cpu"
    decoder: str = "greedy"  # final results: greedy | beam (the model directory's lm/ and decoder.json)
    rescore: str | None = None  # final results: re-rank the beam's N best with this neural LM dir (implies beam)
    # Batch Dispatch (DS2 section 7): eager by default; a small wait gathers more streams per forward pass.
    max_batch: int = 32  # streams per forward pass (1 = every stream gets its own forward passes)
    max_wait_ms: float = 0.0  # after the first ready stream, wait this long for more before stepping
    max_step_s: float = 2.0  # most audio one stream contributes to one step (long uploads cannot stall others)
    threads: int = 0  # torch intra-op threads for the inference worker (0 = torch's default)
    # Limits.
    max_streams: int = 64  # concurrent WebSocket streams; more are refused with close code 1013
    max_pending_requests: int = 8  # POST /v1/transcribe jobs queued or running; more get 503 + Retry-After
    max_request_bytes: int = 50 * 1024 * 1024  # upload size
    max_audio_s: float = 600.0  # audio per upload or stream
    max_frame_bytes: int = 1024 * 1024  # one WebSocket message
    idle_timeout_s: float = 15.0  # a stream with no message for this long is closed
    drain_timeout_s: float = 30.0  # graceful shutdown: how long open streams may take to finish
    api_key: str | None = None  # when set: header "Authorization: Bearer KEY", "X-API-Key: KEY" or ?api_key=KEY
    # Slow clients (each would otherwise hold a slot forever). An upload's body must arrive within
    # body_timeout_s plus one second per min_body_rate bytes received (else 408): a trickle gets ~body_timeout_s.
    body_timeout_s: float = 30.0
    min_body_rate: float = 64 * 1024.0  # bytes per second
    # A stream must deliver audio at >= min_audio_rate x real time, counted from stream_grace_s after it opened
    # (empty frames are no audio), and may last at most max_stream_s of wall clock; else it is closed with 1008.
    min_audio_rate: float = 0.5
    stream_grace_s: float = 5.0
    max_stream_s: float = 1800.0
    # Connections: a request head (request line and headers) must be complete within header_timeout_s of the
    # connection or of its first byte; at most max_connections at once (uvicorn's limit: 503 beyond it, except
    # for /healthz and /metrics, which always answer).
    header_timeout_s: float = 10.0
    max_connections: int = 512

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_streams < 1 or self.max_pending_requests < 1:
            raise ValueError("max_batch, max_streams and max_pending_requests must be >= 1")
        if self.max_wait_ms < 0 or self.max_step_s <= 0 or self.idle_timeout_s <= 0 or self.max_audio_s <= 0:
            raise ValueError("max_wait_ms >= 0 and positive max_step_s, idle_timeout_s, max_audio_s")
        if min(self.body_timeout_s, self.min_body_rate, self.max_stream_s, self.header_timeout_s) <= 0:
            raise ValueError("body_timeout_s, min_body_rate, max_stream_s and header_timeout_s must be positive")
        if not 0 <= self.min_audio_rate < 1 or self.stream_grace_s < 0:
            raise ValueError("min_audio_rate must be in [0, 1) (a fraction of real time) and stream_grace_s >= 0")
        if self.max_connections < self.max_streams + self.max_pending_requests:
            raise ValueError("max_connections must leave room for max_streams + max_pending_requests")
        if self.decoder not in {"greedy", "beam"}:
            raise ValueError(f"decoder must be greedy or beam, got {self.decoder!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"invalid port {self.port}")
