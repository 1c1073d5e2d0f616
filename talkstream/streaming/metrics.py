"""Per-stage metrics: frames in/out, drops, queue depth, stage latency; Prometheus text format and a session summary.

Each server owns one `Metrics` (its own CollectorRegistry, so two servers in one process never mix numbers).
Labels are stage names, never session ids, so the series count stays bounded however many sessions come and go;
per-session figures live in plain `StageStats` objects that go into the end-of-call summary.

Under `serve --workers N` every worker is its own process: prometheus-client's multiprocess mode (the supervisor sets
PROMETHEUS_MULTIPROC_DIR before the workers start) keeps each worker's values in files there, and `render()` sums
them, so any worker's /metrics answers for all of them: counters and histograms summed, gauges summed over the live
workers.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.0133, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Set before prometheus_client was imported (the workers' environment), or multiprocess mode is off.
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        r = self.registry
        self.frames_in = Counter("talkstream_stage_frames_in", "Items a stage consumed", ["stage"], registry=r)
        self.frames_out = Counter("talkstream_stage_frames_out", "Items a stage produced", ["stage"], registry=r)
        self.drops = Counter(
            "talkstream_stage_drops", "Live items dropped before a stage (oldest first)", ["stage"], registry=r
        )
        self.queue_depth = Gauge(
            "talkstream_stage_queue_depth",
            "Items waiting before a stage (summed over sessions)",
            ["stage"],
            registry=r,
            multiprocess_mode="livesum",
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
        self.sessions = Gauge("talkstream_sessions_active", "Open sessions", registry=r, multiprocess_mode="livesum")
        self.sessions_total = Counter("talkstream_sessions", "Sessions opened", registry=r)
        self.errors = Counter("talkstream_errors", "Error events sent, by code", ["code"], registry=r)
        # What a long run must not leak (bench soak reads them): the worker's asyncio tasks, threads and open files.
        self.tasks = Gauge("talkstream_event_loop_tasks", "asyncio tasks on the worker's event loop", registry=r,
                           multiprocess_mode="livesum")
        self.threads = Gauge("talkstream_threads", "Threads in the worker process", registry=r,
                             multiprocess_mode="livesum")
        self.open_fds = Gauge("talkstream_open_fds", "Open file descriptors of the worker process (Linux)", registry=r,
                              multiprocess_mode="livesum")
        self.batch_size = Histogram(
            "talkstream_codec_batch_size",
            "Sessions served by one batched codec step",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )

    def render(self) -> bytes:
        if self.multiprocess_dir:
            from prometheus_client import multiprocess

            everyone = CollectorRegistry()
            multiprocess.MultiProcessCollector(everyone, self.multiprocess_dir)
            return generate_latest(everyone)
        return generate_latest(self.registry)


def p50_p95(values, scale: float = 1.0, digits: int = 2) -> tuple[float, float]:
    """The median and 95th percentile of `values` times `scale`, rounded; (0, 0) when there are none."""
    x = np.asarray(values, dtype=np.float64) * scale if len(values) else np.zeros(1)
    p50, p95 = np.percentile(x, [50, 95])
    return round(float(p50), digits), round(float(p95), digits)


def latency_fields(values, prefix: str, scale: float = 1000.0, digits: int = 2) -> dict[str, float]:
    """{prefix_p50, prefix_p95} of latencies in seconds (as ms by default): the fields of stats and summaries."""
    p50, p95 = p50_p95(values, scale, digits)
    return {f"{prefix}_p50": p50, f"{prefix}_p95": p95}


@dataclass
class StageStats:
    """One session's figures for one stage (the end-of-call summary)."""

    frames_in: int = 0
    frames_out: int = 0
    drops: int = 0
    max_queue: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))  # bounded for long calls

    def summary(self) -> dict:
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "drops": self.drops,
            "max_queue": self.max_queue,
            **latency_fields(self.latencies, "latency_ms", digits=3),
        }
