"""Async pipelines: stages linked by bounded queues, with explicit backpressure, metrics and interruption.

A `Stage` is a small object with one async `process(item) -> list[items]`, a `reset()`, and optionally an async
`flush() -> list[items]` called at end of stream; it keeps its streaming state on itself (one stage instance per
session, so nothing is shared). The `Pipeline` runs one task per stage, owns start/stop/cancel, and links stages
with queues:

- the live input queue (microphone audio) drops its OLDEST item when full and counts the drop: late audio is worth
  less than current audio, and a slow consumer must never grow memory without bound;
- every other queue blocks the producer when full (tokens and text are never dropped silently); the block travels
  back up to the live input queue, where it turns into counted drops;
- a pipeline whose input is not live (tokens, or audio from a file sent faster than real time) has a blocking input
  queue too (`put` waits): the transport stops reading while it waits, so the sender is slowed to the pipeline's pace
  (TCP flow control) and nothing is dropped. A failed or stopped pipeline releases a waiting `put`.

A `fused` pipeline runs every stage in one task, an item through all of them before the next is taken: no queue
and no task switch between stages. Where each stage awaits a batched engine anyway and the stream is one item per
packet (codec echo), the queues between stages buy no parallelism, only a loop hand-off per stage per packet
(measured in docs/benchmarks.md: fewer hand-offs, though not more sessions per worker; the codec thread is that limit).

`interrupt()` (barge-in) cancels whatever each stage is doing, empties every queue and resets every stage, so the
next item starts from clean state; it takes effect before the next frame is processed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

from talkstream.streaming.metrics import Metrics, StageStats

log = logging.getLogger(__name__)


class Stage(Protocol):
    name: str

    async def process(self, item: Any) -> list[Any]: ...

    def reset(self) -> None: ...


class DropOldestQueue(asyncio.Queue):
    """A bounded queue for live media: putting into a full queue evicts the oldest item and counts it."""

    def __init__(self, maxsize: int):
        super().__init__(maxsize)
        self.dropped = 0

    def put_nowait(self, item: Any) -> None:
        while self.full():
            self.get_nowait()
            self.task_done()
            self.dropped += 1
        super().put_nowait(item)

    async def put(self, item: Any) -> None:
        self.put_nowait(item)


class InputQueue(asyncio.Queue):
    """A bounded queue for input that must not be lost: `put` waits for room. `close()` is for a pipeline that will
    take nothing more (a stage failed, or it was stopped): what waits is discarded, a waiting `put` returns, and later
    items are discarded, so no producer waits forever on a queue nobody empties."""

    def __init__(self, maxsize: int):
        super().__init__(maxsize)
        self.closed = False

    def close(self) -> None:
        self.closed = True
        while not self.empty():  # each get wakes one waiting put, which then finds the queue not full
            self.get_nowait()
            self.task_done()

    def full(self) -> bool:
        return not self.closed and super().full()

    def put_nowait(self, item: Any) -> None:
        if not self.closed:
            super().put_nowait(item)


_END = object()  # end-of-stream marker, passed through every stage


class PipelineFailed(RuntimeError):
    """Input offered to a pipeline whose stage has failed (its `error` says why)."""


class Pipeline:
    def __init__(
        self,
        stages: Sequence[Stage],
        metrics: Metrics | None = None,
        live_queue_size: int = 32,
        queue_size: int = 64,
        live: bool = True,
        fused: bool = False,
    ):
        """live: the input is live media (drop oldest when full); otherwise `put` blocks (tokens, text).
        fused: every stage in one task (no queue between stages)."""
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        self.stages = list(stages)
        self.metrics = metrics
        self.stats = {s.name: StageStats() for s in self.stages}
        self.live = live
        self.inbox: asyncio.Queue = DropOldestQueue(live_queue_size) if live else InputQueue(queue_size)
        self.fused = fused
        links = 1 if fused else len(self.stages)
        self.queues: list[asyncio.Queue] = [self.inbox] + [asyncio.Queue(queue_size) for _ in range(links)]
        self.outbox = self.queues[-1]
        self._tasks: list[asyncio.Task] = []
        self._reported_drops = 0
        self.error: BaseException | None = None  # what stopped a stage, if anything did

    def start(self) -> None:
        if self._tasks:
            return
        if self.fused:
            name = "stages-" + "+".join(s.name for s in self.stages)
            self._tasks = [asyncio.create_task(self._run_fused(), name=name)]
            return
        self._tasks = [asyncio.create_task(self._run(i), name=f"stage-{s.name}") for i, s in enumerate(self.stages)]

    def _failed(self, e: BaseException) -> None:
        self.error = e
        if isinstance(self.inbox, InputQueue):  # nothing will take the input now: release a producer waiting on it
            self.inbox.close()

    def _stage_metrics(self, stage: Stage) -> tuple | None:
        m = self.metrics
        return None if m is None else tuple(c.labels(stage.name) for c in (m.frames_in, m.frames_out, m.latency))

    async def _process(self, stage: Stage, item: Any, stats, series: tuple | None) -> list[Any]:
        """One item through one stage, timed and counted."""
        stats.frames_in += 1
        t0 = time.perf_counter()
        outputs = await stage.process(item)
        dt = time.perf_counter() - t0
        stats.latencies.append(dt)
        stats.frames_out += len(outputs)
        if series is not None:
            series[0].inc()
            series[1].inc(len(outputs))
            series[2].observe(dt)
        return outputs

    async def _run_fused(self) -> None:
        src, dst = self.inbox, self.outbox
        series = [self._stage_metrics(s) for s in self.stages]
        stats = [self.stats[s.name] for s in self.stages]

        async def through(i: int, items: list[Any]) -> list[Any]:
            out: list[Any] = []
            for x in items:
                out += await self._process(self.stages[i], x, stats[i], series[i])
            return out

        while True:
            item = await src.get()
            src.task_done()
            try:
                if item is _END:
                    items: list[Any] = []
                    for i, stage in enumerate(self.stages):  # what each stage held back, through the ones after
                        flush = getattr(stage, "flush", None)
                        items = await through(i, items) + (await flush() if flush is not None else [])
                    for out in items:
                        await dst.put(out)
                    await dst.put(_END)
                    return
                stats[0].max_queue = max(stats[0].max_queue, src.qsize() + 1)
                items = [item]
                for i in range(len(self.stages)):
                    items = await through(i, items)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # as in _run: the stream ends visibly
                log.exception("fused stages %s failed", "+".join(s.name for s in self.stages))
                self._failed(e)
                await dst.put(_END)
                return
            for out in items:
                await dst.put(out)  # blocks when the consumer is behind: backpressure to the live inbox

    async def _run(self, i: int) -> None:
        stage, src, dst = self.stages[i], self.queues[i], self.queues[i + 1]
        stats = self.stats[stage.name]
        series = self._stage_metrics(stage)  # the labelled series resolved once, not on every item of the hot path
        while True:
            item = await src.get()
            src.task_done()
            try:
                if item is _END:
                    flush = getattr(stage, "flush", None)  # a stage may hold a last output until the stream ends
                    outputs = await flush() if flush is not None else []
                else:
                    stats.max_queue = max(stats.max_queue, src.qsize() + 1)
                    outputs = await self._process(stage, item, stats, series)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a stage failure ends the stream, visibly: get() returns None, .error says why
                log.exception("stage %s failed", stage.name)
                self._failed(e)
                await dst.put(_END)
                return
            for out in outputs:
                await dst.put(out)  # blocks when downstream is full: backpressure
            if item is _END:
                await dst.put(_END)
                return

    def feed(self, item: Any) -> None:
        """Live input (never blocks): when the first stage falls behind, the oldest waiting item is dropped."""
        if not self.live:
            raise TypeError("feed() is for live pipelines; use `await put(item)`")
        self._check_alive()
        self.inbox.put_nowait(item)
        new = self.dropped - self._reported_drops
        if new:
            self._reported_drops = self.dropped
            self.stats[self.stages[0].name].drops += new
            if self.metrics is not None:
                self.metrics.drops.labels(self.stages[0].name).inc(new)

    @property
    def dropped(self) -> int:
        """Live input items dropped so far (0 for a pipeline whose input waits)."""
        return self.inbox.dropped if isinstance(self.inbox, DropOldestQueue) else 0

    def _check_alive(self) -> None:
        if self.error is not None:
            raise PipelineFailed(f"a stage failed: {self.error}")

    async def put(self, item: Any) -> None:
        """Input that must not be lost: waits while the pipeline is full (backpressure). Returns at once, the item
        discarded, once the pipeline has stopped; raises PipelineFailed once a stage has failed."""
        self._check_alive()  # a dead pipeline would never make room: fail now instead of waiting forever
        await self.inbox.put(item)

    async def end(self) -> None:
        """No more input: everything queued is processed, then `get` returns None."""
        self._check_alive()
        # The plain Queue.put waits for room, so the end marker neither is dropped nor evicts live audio.
        await asyncio.Queue.put(self.inbox, _END)

    async def get(self) -> Any | None:
        """The next output item, or None at end of stream."""
        item = await self.outbox.get()
        return None if item is _END else item

    def queue_depths(self) -> dict[str, int]:
        """Items waiting before each stage (fused: all wait before the first)."""
        if self.fused:
            return {self.stages[0].name: self.inbox.qsize()}
        return {s.name: q.qsize() for s, q in zip(self.stages, self.queues, strict=False)}

    async def interrupt(self) -> None:
        """Barge-in: cancel in-flight work, drop everything queued, reset every stage's state, start again."""
        await self._cancel()
        for q in self.queues:
            while not q.empty():
                q.get_nowait()
                q.task_done()
        for s in self.stages:
            s.reset()
        self.start()

    async def _cancel(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def stop(self) -> None:
        await self._cancel()
        if isinstance(self.inbox, InputQueue):
            self.inbox.close()

    def summary(self) -> dict:
        return {name: s.summary() for name, s in self.stats.items()}
