"""Per-stage metrics: frames in/out, drops, queue depth, stage latency; Prometheus text format and a session summary.

Each server owns one `Metrics` (its own CollectorRegistry, so two servers in one process never mix numbers).
Labels are stage names, never session ids, so the series count stays bounded however many sessions come and go;
per-session figures live in plain `StageStats` objects that go into the end-of-call summary.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.0133, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames_in = Counter("talkstream_stage_frames_in", "Items a stage consumed", ["stage"], registry=r)
        self.frames_out = Counter("talkstream_stage_frames_out", "Items a stage produced", ["stage"], registry=r)
        self.drops = Counter(
            "talkstream_stage_drops", "Live items dropped before a stage (oldest first)", ["stage"], registry=r
        )
        self.queue_depth = Gauge(
            "talkstream_stage_queue_depth", "Items waiting before a stage (summed over sessions)", ["stage"], registry=r
        )
        self.latency = Histogram(
            "talkstream_stage_latency_seconds",
            "Time a stage spends on one item",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.frame_latency = Histogram(
            "talkstream_frame_latency_seconds",
            "Server time from an audio frame's arrival to its reply leaving",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sessions = Gauge("talkstream_sessions_active", "Open sessions", registry=r)
        self.sessions_total = Counter("talkstream_sessions", "Sessions opened", registry=r)
        self.errors = Counter("talkstream_errors", "Error events sent, by code", ["code"], registry=r)
        self.batch_size = Histogram(
            "talkstream_codec_batch_size",
            "Sessions served by one batched codec step",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class StageStats:
    """One session's figures for one stage (the end-of-call summary)."""

    frames_in: int = 0
    frames_out: int = 0
    drops: int = 0
    max_queue: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))  # bounded for long calls

    def summary(self) -> dict:
        lat = np.array(self.latencies) * 1000 if self.latencies else np.zeros(1)
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "drops": self.drops,
            "max_queue": self.max_queue,
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 3),
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 3),
        }
