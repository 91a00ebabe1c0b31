"""Prometheus metrics of one server, in its own registry (so several servers can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Real-time frame budgets live in 5..100 ms; the tail goes to seconds (source fits, overload).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.033, 0.05, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)


class ServerMetrics:
    """The four metric families of DESIGN §6 plus session setup time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.frame_latency = Histogram(
            "jr2net_frame_latency_seconds", "Per-frame wall time by stage (total: admission to reply)",
            ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.frames = Counter(
            "jr2net_frames_total", "Frames answered, by result (ok, fallback, invalid, dropped, "
            "unavailable, internal)", ["result"], registry=self.registry,
        )
        self.sessions_active = Gauge(
            "jr2net_sessions_active", "Streaming sessions holding a slot (setting up or running)",
            registry=self.registry,
        )
        self.rejected = Counter(
            "jr2net_rejected_total", "Calls refused, by reason (sessions_full, unauthenticated, "
            "draining, invalid_config, no_face, no_config, malformed, idle_timeout, write_stall)",
            ["reason"], registry=self.registry,
        )
        self.session_setup = Histogram(
            "jr2net_session_setup_seconds", "Source decode + fit time per session",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self._http = None

    def observe_timings(self, timings: dict[str, float]) -> None:
        for stage, seconds in timings.items():
            self.frame_latency.labels(stage=stage).observe(seconds)

    def serve_http(self, host: str, port: int) -> int:
        """Start the /metrics HTTP endpoint in a daemon thread; returns the bound port."""
        httpd, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = httpd
        return int(httpd.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
