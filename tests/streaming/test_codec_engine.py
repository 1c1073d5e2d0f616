"""The batched codec engine: many sessions in one step give exactly what each would get alone."""

from __future__ import annotations

import asyncio
import functools

import pytest
import torch

from talkstream.codecs.audio.codec import CodecState
from talkstream.streaming.codec_engine import BusyShare, CodecEngine
from tests.conftest import speechlike


def test_batched_sessions_equal_solo_runs(tiny_codec):
    hop = tiny_codec.frame_size
    signals = [torch.from_numpy(speechlike(0.4, seed=i))[None, None][..., : 30 * hop] for i in range(5)]
    ks = [4, 4, 2, 4, 1]  # mixed bitrates: only like requests are stacked

    async def session(engine, x, k):
        state, codes, pcm = tiny_codec.init_state(1, k), [], []
        for i in range(0, x.shape[-1], 2 * hop):
            c, p, state = await engine.roundtrip(x[..., i : i + 2 * hop], state)
            codes.append(c)
            pcm.append(p)
        return torch.cat(codes, -1), torch.cat(pcm, -1)

    async def main():
        engine = CodecEngine(tiny_codec)
        engine.start()
        out = await asyncio.gather(*(session(engine, x, k) for x, k in zip(signals, ks, strict=True)))
        await engine.stop()
        return out, engine.items / engine.steps

    results, mean_batch = asyncio.run(main())
    assert mean_batch > 1.5  # requests really were stacked
    for x, k, (codes, pcm) in zip(signals, ks, results, strict=True):
        ref_codes = tiny_codec.encode(x, k)
        torch.testing.assert_close(codes, ref_codes)
        torch.testing.assert_close(pcm, tiny_codec.decode(ref_codes), atol=1e-5, rtol=0)


def test_stack_unbind_roundtrip(tiny_codec):
    states = [tiny_codec.init_state(1, 4) for _ in range(3)]
    for i, s in enumerate(states):
        _, states[i] = tiny_codec.encode_step(torch.randn(1, 1, 3 * tiny_codec.frame_size), s)
    back = CodecState.stack(states).unbind()
    for a, b in zip(states, back, strict=True):
        for ta, tb in zip(a.encoder + a.decoder, b.encoder + b.decoder, strict=True):
            torch.testing.assert_close(ta, tb)


def test_onnx_backend_equals_torch(tiny_codec):
    """The same sessions through onnxruntime graphs (exported on first use, dynamic batch) give torch's output."""
    hop = tiny_codec.frame_size
    signals = [torch.from_numpy(speechlike(0.3, seed=i))[None, None][..., : 20 * hop] for i in range(3)]

    async def session(engine, x):
        state, codes, pcm = tiny_codec.init_state(1, 4), [], []
        for i in range(0, x.shape[-1], 2 * hop):
            c, p, state = await engine.roundtrip(x[..., i : i + 2 * hop], state)
            codes.append(c)
            pcm.append(p)
        dec_state = tiny_codec.init_state(1, 4)
        back, dec_state = await engine.decode(torch.cat(codes, -1)[..., :4], dec_state)
        return torch.cat(codes, -1), torch.cat(pcm, -1), back

    async def main(backend):
        engine = CodecEngine(tiny_codec, backend=backend, frames_per_step=2)
        engine.warmup()
        engine.start()
        out = await asyncio.gather(*(session(engine, x) for x in signals))
        await engine.stop()
        return out

    for (c1, p1, b1), (c2, p2, b2) in zip(asyncio.run(main("torch")), asyncio.run(main("onnx")), strict=True):
        assert (c1 == c2).float().mean() > 0.98  # a code may flip where a latent sits on a cell border
        if torch.equal(c1, c2):
            torch.testing.assert_close(p2, p1, atol=1e-4, rtol=0)
        torch.testing.assert_close(b2, b1, atol=1e-4, rtol=0)


def test_onnx_serves_every_codebook_count_and_length_from_the_warmed_graphs(tiny_codec, monkeypatch):
    """After warmup no graph is exported: every codebook count, any token length, partial steps at the end of a
    stream, all from the planned graphs, equal to torch; a shape outside the plan is refused, never exported."""
    from talkstream.codecs.audio import onnx_step
    from talkstream.streaming.codec_engine import UnplannedShape

    exports = []
    real = onnx_step.export_bytes
    monkeypatch.setattr(onnx_step, "export_bytes", lambda spec: exports.append(spec.name) or real(spec))
    hop, full = tiny_codec.frame_size, tiny_codec.num_codebooks
    x = torch.from_numpy(speechlike(0.3, seed=7))[None, None][..., : 9 * hop]
    tokens = torch.randint(0, 32, (1, full, 40))

    async def serve(engine):
        out = {}
        for k in range(1, full + 1):
            state, codes, pcm = tiny_codec.init_state(1, k), [], []
            for i, j in [(0, 2), (2, 4), (4, 7), (7, 9)]:  # steps of 2, then 3 frames, then 2 (a flush-sized step)
                c, p, state = await engine.roundtrip(x[..., i * hop : j * hop], state)
                codes.append(c)
                pcm.append(p)
            enc, _ = await engine.encode(x, tiny_codec.init_state(1, k))
            state, back = tiny_codec.init_state(1, k), []
            for n in (1, 2, 3, 7, 27):  # token messages of any length
                done = sum(t.shape[-1] for t in back) // hop
                b, state = await engine.decode(tokens[:, :k, done : done + n], state)
                back.append(b)
            out[k] = torch.cat(codes, -1), torch.cat(pcm, -1), enc, torch.cat(back, -1)
        return out

    async def main(backend):
        engine = CodecEngine(tiny_codec, backend=backend, frames_per_step=2)
        engine.warmup()
        warm = len(exports)
        engine.start()
        out = await serve(engine)
        refused = None
        if backend == "onnx":
            engine.step_frames = [3]  # a step size nobody planned: refused, not exported
            try:
                await engine.decode(tokens[:, :1, :3], tiny_codec.init_state(1, 1))
            except UnplannedShape as e:
                refused = e
        await engine.stop()
        return out, warm, refused

    ref, _, _ = asyncio.run(main("torch"))
    exports.clear()
    got, warm, refused = asyncio.run(main("onnx"))
    assert warm == len(exports), exports[warm:]  # nothing exported after warmup
    assert refused is not None and "3 frames" in str(refused)
    for k in range(1, full + 1):
        (c1, p1, _, b1), (c2, p2, e2, b2) = ref[k], got[k]
        assert c1.shape[1] == c2.shape[1] == k and (c1 == c2).float().mean() > 0.98 and torch.equal(e2, c2)
        if torch.equal(c1, c2):
            torch.testing.assert_close(p2, p1, atol=1e-4, rtol=0)
        torch.testing.assert_close(b2, b1, atol=1e-4, rtol=0)


def test_a_failing_request_fails_alone_and_the_engine_serves_on(tiny_codec):
    """A batched call that raises fails its own requests alone: the codec's request beside it and the other
    batched work get their results, and later requests are served."""
    hop = tiny_codec.frame_size

    def broken(items):
        raise RuntimeError("this batch fails")

    async def main():
        engine = CodecEngine(tiny_codec)
        engine.start()
        pcm = torch.zeros(1, 1, 2 * hop)
        good = engine.roundtrip(pcm, tiny_codec.init_state(1, 4))
        bad = engine.batched(broken, None, None)
        echo = engine.batched(lambda items: [d for d, _ in items], "x", None)
        results = await asyncio.gather(good, bad, echo, return_exceptions=True)
        later = await engine.roundtrip(pcm, tiny_codec.init_state(1, 4))
        await engine.stop()
        return results, later

    (good, bad, echo), later = asyncio.run(main())
    assert good[0].shape == (1, 4, 2) and later[0].shape == (1, 4, 2)
    assert isinstance(bad, RuntimeError) and echo == "x"


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_codes_past_their_codebook_are_refused_not_decoded(tiny_codec, backend):
    """The decoder looks all codebooks up in one table, so a code one past its codebook's end is refused before it
    could read the next codebook's first entry; the engine serves on."""
    async def main():
        engine = CodecEngine(tiny_codec, backend=backend)
        engine.start()
        codes = torch.zeros(1, 2, 2, dtype=torch.long)
        bad = codes.clone()
        bad[0, 0, 1] = tiny_codec.codebook_size
        with pytest.raises(ValueError, match="out of range"):
            await engine.decode(bad, tiny_codec.init_state(1, 2))
        pcm, _ = await engine.decode(codes, tiny_codec.init_state(1, 2))
        await engine.stop()
        return pcm

    assert asyncio.run(main()).shape == (1, 1, 2 * tiny_codec.frame_size)


async def _timed_encode(engine: CodecEngine, delay: float) -> float:
    """After `delay` s, one 2-frame encode through the engine: how long it took (its wait for a step included)."""
    await asyncio.sleep(delay)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await engine.encode(torch.randn(1, 1, 2 * engine.codec.frame_size), engine.codec.init_state(1, 4))
    return loop.time() - t0


def test_a_step_interval_batches_requests_under_load_and_delays_none_at_light_load(tiny_codec):
    """With step_interval_ms, requests that arrive within the interval after a step began share the next step; a
    request after a quiet spell runs at once."""

    async def main():
        engine = CodecEngine(tiny_codec, step_interval_ms=60)
        engine.start()
        one = functools.partial(_timed_encode, engine)
        try:
            # the first runs at once; three more arrive 10-30 ms into its interval: they wait for one step together
            waits = await asyncio.gather(one(0.0), one(0.01), one(0.02), one(0.03))
            steps_under_load = engine.steps
            await asyncio.sleep(0.2)  # quiet: the interval is long past
            alone = await one(0.0)
        finally:
            await engine.stop()
        return waits, steps_under_load, engine.steps, alone

    waits, steps_under_load, steps, alone = asyncio.run(main())
    assert steps_under_load == 2 and steps == 3  # 1 + (3 together), then the lone one
    assert waits[0] < 0.05 and alone < 0.05  # nothing waited at light load
    assert min(waits[1:]) > 0.02  # the batched ones waited for the interval to end


def test_the_busy_share_is_near_one_when_steps_run_back_to_back_and_decays_when_idle():
    busy = BusyShare(window_s=1.0)
    assert busy.value(0.0) == 0.0
    for i in range(300):  # 3 s of 10 ms steps with no gap
        busy.observe(i * 0.01, (i + 1) * 0.01)
    assert busy.value(3.0) > 0.9
    assert busy.value(6.0) < 0.06  # 3 s idle
    half = BusyShare(window_s=1.0)
    for i in range(300):  # 5 ms steps every 10 ms: half busy
        half.observe(i * 0.01, i * 0.01 + 0.005)
    assert 0.4 < half.value(3.0) < 0.6


def test_an_interval_that_follows_load_delays_nothing_when_idle_and_batches_when_busy(tiny_codec):
    """Scaled by the codec thread's busy share, the interval is ~0 for an engine that has been idle (a request right
    after a step runs at once) and whole for one that has been saturated (requests within it share a step)."""

    async def main():
        engine = CodecEngine(tiny_codec, step_interval_ms=60, interval_follows_load=True)
        engine.start()
        loop = asyncio.get_running_loop()
        one = functools.partial(_timed_encode, engine)
        try:
            idle_waits = await asyncio.gather(one(0.0), one(0.01), one(0.02))  # tiny steps: the share stays ~0
            idle_steps = engine.steps
            await asyncio.sleep(0.1)  # the last step is long past even a whole interval
            engine.busy.share, engine.busy.at = 1.0, loop.time()  # as after a second of steps back to back
            busy_waits = await asyncio.gather(one(0.0), one(0.005), one(0.01), one(0.015))
        finally:
            await engine.stop()
        return idle_waits, idle_steps, engine.steps - idle_steps, busy_waits

    idle_waits, idle_steps, busy_steps, busy_waits = asyncio.run(main())
    assert idle_steps == 3 and max(idle_waits) < 0.03  # each ran alone, at once
    assert busy_steps == 2  # the first at once (the last step is long past), the other three together
    assert min(busy_waits[1:]) > 0.02  # they waited for the (nearly whole) interval
