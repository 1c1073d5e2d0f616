"""One codec serving many sessions: requests that arrive together are stacked into one batched step.

A single frame through the codec costs ~8 ms on one thread, almost all of it per-call overhead on tiny tensors;
twenty sessions' frames stacked into one call cost ~16 ms in all (0.8 ms each). So the server does not run the codec
per session: each session keeps its own `CodecState` (nothing shared), and submits (state, input) to the engine;
the engine's worker takes every request waiting, groups those that can share a step (same operation, codebooks and
length), stacks their states (`CodecState.stack`), runs one step in a worker thread (torch releases the GIL, so the
event loop keeps serving sockets), and hands each session its slice and new state.

With `gather_ms` = 0 batching adds no waiting: a lone request runs at once, and the requests that piled up while a
step ran form the next batch. But sessions' frames arrive at unrelated phases, so at light load nothing piles up and
every session pays a whole step alone; a gather window (the worker waits up to `gather_ms` after the first request
for others) trades that much latency for batches that grow with the number of sessions.

`step_interval_ms` batches by load instead: a step starts no sooner than that long after the previous one began. At
light load the previous step is long past and a request runs at once; under load, requests that arrive within the
interval join one step. Without it, sessions' frames arriving at unrelated phases each found the engine free and ran
alone: at 16 sessions the codec thread was 92% busy with steps of one (1.5 ms each, where a step of 16 costs
0.7 ms a session). With `interval_follows_load` the interval is scaled by the share of the last second the worker's
thread spent in steps (`BusyShare`, one for the codec thread and one for the side thread): at 16 sessions requests
arrive every 2 ms, so a fixed interval made nearly every frame wait (p50 +5-6 ms in a one-off side-by-side run,
docs/benchmarks.md) while the thread was only half busy; scaled, a half-idle engine waits half as long and a saturated
one the whole interval, where batching is what keeps it from falling behind.

With the ONNX backend every graph a client can reach is opened by `warmup()`, before the server takes traffic, and
the set is fixed (`graph_plan`): a request is split into steps of the planned frame counts (1 and `frames_per_step`),
encoding always uses the full codebook count and keeps the first K codes (residual quantization: they are the K-code
encoding), and a roundtrip at K below the full count is that encoding then a K-code decode. So clients choose any
codebook count and token-message length without a graph being exported at request time, and the cache does not grow
with their choices; after warmup a shape outside the plan is refused (`UnplannedShape`), never exported.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from talkstream.codecs.audio.codec import AudioCodec, CodecState
from talkstream.streaming.metrics import Metrics

if TYPE_CHECKING:
    from talkstream.codecs.audio.onnx_step import OnnxCodecSteps

log = logging.getLogger(__name__)


@dataclass
class _Request:
    # "encode", "roundtrip" (encode then decode), "decode"; or a batched function of other work (`batched`)
    op: str | Callable[[list[tuple[Any, Any]]], list[Any]]
    state: Any  # a CodecState for the codec's ops
    data: Any  # pcm [1, 1, n*hop] or codes [1, K, F] for the codec's ops
    future: asyncio.Future = field(repr=False)
    arrived: float = 0.0  # loop time of submission: the gather window counts from here

    def key(self) -> tuple:
        if callable(self.op):
            return (self.op,)
        return self.op, self.state.num_codebooks, tuple(self.data.shape), self.state.pending.shape[-1]


class BusyShare:
    """The share of recent time a worker spent in steps: an exponentially weighted sum of step durations over a
    `window_s` time constant (1.0 when steps run back to back for a few windows, decaying to 0 when idle)."""

    def __init__(self, window_s: float = 1.0):
        self.window_s, self.share = window_s, 0.0
        self.at: float | None = None

    def value(self, now: float) -> float:
        if self.at is None:
            return 0.0
        return self.share * math.exp(-(now - self.at) / self.window_s)

    def observe(self, start: float, end: float) -> None:
        """A step ran from `start` to `end` (loop time)."""
        self.share = min(1.0, self.value(end) + (end - start) / self.window_s)
        self.at = end


class UnplannedShape(RuntimeError):
    """A codec step no warmed graph serves (a bug: every shape a session can ask for is planned)."""


class CodecEngine:
    def __init__(
        self,
        codec: AudioCodec,
        max_batch: int = 64,
        metrics: Metrics | None = None,
        threads: int = 1,
        gather_ms: float = 0.0,
        backend: str = "torch",
        onnx_options: dict | None = None,
        frames_per_step: int = 2,
        step_interval_ms: float = 0.0,
        interval_follows_load: bool = False,
    ):
        self.codec = codec
        self.frames_per_step = frames_per_step
        self.step_frames = sorted({frames_per_step, 1}, reverse=True)  # ONNX steps are split into these sizes
        self.warmed: set[tuple[str, int, int]] | None = None  # after warmup: the only graphs the engine may run
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        self.backend = backend
        self.onnx: OnnxCodecSteps | None = None
        if backend == "onnx":
            from talkstream.codecs.audio.onnx_step import OnnxCodecSteps

            # onnx_options: export_dir, precision ("fp32" | "int8"), providers (see OnnxCodecSteps)
            self.onnx = OnnxCodecSteps(codec, threads, **(onnx_options or {}))
        self.gather_s = gather_ms / 1000
        self.step_interval_s = step_interval_ms / 1000
        self.interval_follows_load = interval_follows_load
        self.busy = BusyShare()  # the codec thread's; the batched side thread has its own (`side_busy`)
        self.side_busy = BusyShare()
        self.max_batch = max_batch
        self.metrics = metrics
        self.threads = threads
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="codec", initializer=torch.set_num_threads, initargs=(threads,)
        )
        # Other batched work (`batched`: the VAD) has its own queue, gather loop and thread beside the codec's: on
        # the codec thread it would wait behind codec steps and hold one core for both (measured: the server then
        # used one core and held fewer sessions than with a thread hop per session).
        self._side_queue: asyncio.Queue[_Request] | None = None
        self._side_worker: asyncio.Task | None = None
        self._side_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batched")
        self.steps = 0
        self.items = 0

    def start(self) -> None:
        if self._worker is None:
            self._queue, self._side_queue = asyncio.Queue(), asyncio.Queue()
            self._worker = asyncio.create_task(self._run(self._queue, self._pool, self.busy), name="codec-engine")
            self._side_worker = asyncio.create_task(self._run(self._side_queue, self._side_pool, self.side_busy),
                                                    name="batched")

    async def stop(self) -> None:
        for task in (self._worker, self._side_worker):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._worker = self._side_worker = None
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._side_pool.shutdown(wait=False, cancel_futures=True)

    def graph_plan(self) -> list[tuple[str, int, int]]:
        """Every ONNX graph (op, codebooks, frames) a session can reach: the full-codebook encoder and roundtrip,
        and a decoder per codebook count, at each planned step size."""
        full = self.codec.num_codebooks
        plan = [("roundtrip", full, self.frames_per_step)]
        plan += [("encode", full, f) for f in self.step_frames]
        plan += [("decode", k, f) for k in range(1, full + 1) for f in self.step_frames]
        return plan

    def warmup(self) -> None:
        """Run every path once so the first real frame pays no lazy initialisation. ONNX: open (or export) every
        planned graph and run it once; from here on nothing else is ever exported."""
        if self.onnx is not None:
            plan = self.graph_plan()
            self.onnx.warmup(plan)
            for op, k, f in plan:
                state = self.codec.init_state(1, k)
                x = (torch.zeros(1, k, f, dtype=torch.long) if op == "decode"
                     else torch.zeros(1, 1, f * self.codec.frame_size))
                self.onnx.step(op, x, state)
            self.warmed = set(plan)
        with torch.inference_mode():
            state = self.codec.init_state(2, self.codec.num_codebooks)
            codes, state = self.codec.encode_step(torch.zeros(2, 1, 4 * self.codec.frame_size), state)
            self.codec.decode_step(codes, state)

    async def _submit(self, op, state, data):
        if self._worker is None:
            raise RuntimeError("CodecEngine.start() was not called")
        loop = asyncio.get_running_loop()
        req = _Request(op, state, data, loop.create_future(), loop.time())
        (self._side_queue if callable(op) else self._queue).put_nowait(req)
        return await req.future

    async def run(self, fn, *args):
        """Other model work (the chat reply's window decode) on the codec thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def batched(self, fn: Callable[[list[tuple[Any, Any]]], list[Any]], data: Any, state: Any) -> Any:
        """Other per-session work that batches (the VAD: `SileroVAD.step_many`), gathered as the codec's requests
        are and run on a thread of its own beside the codec's: `fn` gets every waiting session's (data, state) at
        once and returns one result each. Per session per frame this is one call shared by all, not a thread hop
        of its own."""
        return await self._submit(fn, state, data)

    async def encode(self, pcm: Tensor, state: CodecState) -> tuple[Tensor, CodecState]:
        """pcm [1, 1, n*hop] (whole frames; the session buffers the rest) -> codes [1, K, n]."""
        codes, _, state = await self._submit("encode", state, pcm)
        return codes, state

    async def roundtrip(self, pcm: Tensor, state: CodecState) -> tuple[Tensor, Tensor, CodecState]:
        """pcm [1, 1, n*hop] -> (codes [1, K, n], decoded pcm [1, 1, n*hop] trailing by `decode_delay`)."""
        return await self._submit("roundtrip", state, pcm)

    async def decode(self, codes: Tensor, state: CodecState) -> tuple[Tensor, CodecState]:
        # Refused here, before any graph: the codebooks are one table in the exported decoder, so a code past its own
        # codebook would read the next one's instead of failing (the wire already checks; this is for every caller).
        self.codec.check_codes(codes)
        _, pcm, state = await self._submit("decode", state, codes)
        return pcm, state

    def _step_groups(self, groups: list[list[_Request]]) -> list[list | Exception]:
        outcomes: list[list | Exception] = []
        for group in groups:
            try:
                outcomes.append(self._step(group))
            except Exception as e:
                log.exception("codec step failed")
                outcomes.append(e)
        return outcomes

    def _step(self, group: list[_Request]) -> list:
        op = group[0].op
        if callable(op):
            return op([(r.data, r.state) for r in group])
        state = CodecState.stack([r.state for r in group]) if len(group) > 1 else group[0].state
        data = torch.cat([r.data for r in group]) if len(group) > 1 else group[0].data
        if self.onnx is not None:
            codes, pcm, state = self._onnx_step(op, data, state)
        else:
            codes, pcm, state = self._torch_step(op, data, state)
        states = state.unbind() if len(group) > 1 else [state]
        n = len(group)
        return [
            (codes[i : i + 1] if codes is not None else None, pcm[i : i + 1] if pcm is not None else None, states[i])
            for i in range(n)
        ]

    def _torch_step(self, op: str, data: Tensor, state: CodecState) -> tuple[Tensor | None, Tensor | None, CodecState]:
        return torch_codec_step(self.codec, op, data, state)

    def _graph(self, op: str, x: Tensor, state: CodecState, frames: int) -> tuple:
        k = x.shape[1] if op == "decode" else state.num_codebooks
        if self.warmed is not None and (op, k, frames) not in self.warmed:
            raise UnplannedShape(f"no warmed graph for {op} at {k} codebooks, {frames} frames")
        assert self.onnx is not None  # the onnx backend's steps
        return self.onnx.step(op, x, state)

    def _split(self, n: int) -> list[int]:
        sizes = []
        for f in self.step_frames:
            sizes += [f] * (n // f)
            n %= f
        return sizes

    def _onnx_decode(self, codes: Tensor, state: CodecState) -> tuple[Tensor, CodecState]:
        """codes [B, K, F] -> pcm [B, 1, F*hop], in steps of the planned sizes."""
        out, i = [], 0
        for f in self._split(codes.shape[-1]):
            _, pcm, state = self._graph("decode", codes[..., i : i + f].contiguous(), state, f)
            out.append(pcm)
            i += f
        return torch.cat(out, -1) if out else codes.new_zeros(codes.shape[0], 1, 0, dtype=torch.float32), state

    def _onnx_step(self, op: str, x: Tensor, state: CodecState) -> tuple[Tensor | None, Tensor | None, CodecState]:
        if op == "decode":
            pcm, state = self._onnx_decode(x, state)
            return None, pcm, state
        hop, k, full = self.codec.frame_size, state.num_codebooks, self.codec.num_codebooks
        n = x.shape[-1] // hop
        if op == "roundtrip" and k == full and n == self.frames_per_step:
            return self._graph("roundtrip", x, state, n)
        # The full-codebook encoder: its first k codes are the k-code encoding (residual quantization).
        st, codes, i = dataclasses.replace(state, num_codebooks=full), [], 0
        for f in self._split(n):
            c, _, st = self._graph("encode", x[..., i * hop : (i + f) * hop].contiguous(), st, f)
            codes.append(c[:, :k])
            i += f
        out = torch.cat(codes, -1) if codes else torch.zeros(x.shape[0], k, 0, dtype=torch.long)
        st = dataclasses.replace(st, num_codebooks=k)
        if op == "encode":
            return out, None, st
        pcm, st = self._onnx_decode(out, st)
        return out, pcm, st

    async def _run(self, queue: asyncio.Queue, pool: concurrent.futures.Executor, busy: BusyShare) -> None:
        loop = asyncio.get_running_loop()
        last_start = -float("inf")
        while True:
            batch = [await queue.get()]
            # From the first request's arrival, not from now: a worker that is behind must not wait again. And no
            # sooner than the step interval after the last step began (by load: at light load that is long past).
            interval = self.step_interval_s
            if self.interval_follows_load:
                interval *= busy.value(loop.time())
            deadline = max(batch[0].arrived + self.gather_s, last_start + interval)
            while len(batch) < self.max_batch:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            groups: dict[tuple, list[_Request]] = {}
            for r in batch:
                if not r.future.cancelled():
                    groups.setdefault(r.key(), []).append(r)
            # Every group of this batch (codec steps of each shape) in one hand-off to the thread.
            last_start = loop.time()
            outcomes = await loop.run_in_executor(pool, self._step_groups, list(groups.values()))
            busy.observe(last_start, loop.time())
            for group, results in zip(groups.values(), outcomes, strict=True):
                if isinstance(results, Exception):  # a bad request must not take the engine down for everyone
                    for r in group:
                        if not r.future.done():
                            r.future.set_exception(results)
                    continue
                self.steps += 1
                self.items += len(group)
                if self.metrics is not None:
                    self.metrics.batch_size.observe(len(group))
                for r, res in zip(group, results, strict=True):
                    if not r.future.done():
                        r.future.set_result(res)


def torch_codec_step(codec, op: str, data: Tensor, state: CodecState
                     ) -> tuple[Tensor | None, Tensor | None, CodecState]:
    """One engine operation (encode, decode, roundtrip) in torch eager: (codes or None, pcm or None, new state)."""
    with torch.inference_mode():
        codes, pcm = None, None
        if op == "encode":
            codes, state = codec.encode_step(data, state)
        if op == "roundtrip":
            codes, pcm, state = codec.roundtrip_step(data, state)
        if op == "decode":
            pcm, state = codec.decode_step(data, state)
    return codes, pcm, state
