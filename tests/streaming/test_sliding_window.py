"""SlidingWindowDecoder: blocks join into exactly the whole-sequence decode when the lookback covers the decoder's
context; with a shorter lookback the error at joins is measured and bounded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from talkstream.checkpoint import load_audio_codec
from talkstream.streaming.sliding_window import SlidingWindowDecoder
from tests.conftest import speechlike


@pytest.fixture(scope="module")
def codec():
    return load_audio_codec()


@pytest.fixture(scope="module")
def tokens(codec):
    x = torch.from_numpy(speechlike(1.5))[None, None]
    return codec.encode(x, 8)[..., :112]


def stream(dec, tokens, arrivals):
    state, out, i = dec.init_state(tokens.shape[1]), [], 0
    for n in arrivals:
        pcm, state = dec.step(tokens[..., i : i + n], state)
        out.append(pcm)
        i += n
    pcm, state = dec.flush(state)
    return torch.cat(out + [pcm], -1)


@pytest.mark.parametrize(
    "block, arrivals",
    [(1, [1] * 112), (6, [5, 7] * 9 + [4]), (10, [112]), (4, [3] * 37 + [1])],
    ids=["block1-per-frame", "block6-uneven", "block10-all-at-once", "block4-lookahead"],
)
def test_blocks_join_exactly_with_full_lookback(codec, tokens, block, arrivals):
    dec = SlidingWindowDecoder(codec, block_frames=block, lookahead_frames=2 if block == 4 else 0)
    assert dec.lookback_frames == codec.decoder_context_frames
    full = codec.decode(tokens)
    torch.testing.assert_close(stream(dec, tokens, arrivals), full, atol=1e-4, rtol=0)


def test_short_lookback_error_is_bounded_and_only_at_joins(codec, tokens):
    full = codec.decode(tokens)
    hop = codec.frame_size
    errs = {}
    for lookback in (2, 8, 20):
        out = stream(SlidingWindowDecoder(codec, block_frames=8, lookback_frames=lookback), tokens, [112])
        err = (out - full).abs()[0, 0]
        errs[lookback] = float(err.pow(2).mean() / full.pow(2).mean())
        # The first block has all the context there is: exact.
        assert float(err[: 8 * hop].max()) < 1e-4
    # Error shrinks as lookback grows: below the signal's own energy at 2 frames (codec v3: 0.77), small at 8 (0.21),
    # and all but gone at 20 (1e-5; the default lookback, 39 frames, is the decoder's whole context: exact).
    assert errs[2] > errs[8] > errs[20], errs
    assert errs[2] < 1.0 and errs[8] < 0.4 and errs[20] < 1e-3, errs


def test_first_packet_after_one_block(codec, tokens):
    dec = SlidingWindowDecoder(codec, block_frames=6)
    state = dec.init_state(8)
    pcm, state = dec.step(tokens[..., :5], state)
    assert pcm.shape[-1] == 0
    pcm, state = dec.step(tokens[..., 5:6], state)
    assert pcm.shape[-1] == 6 * codec.frame_size
    # Only the lookback is kept, not the whole history.
    pcm, state = dec.step(tokens[..., 6:100], state)
    assert state.tokens.shape[-1] <= dec.lookback_frames + dec.block_frames


def test_bad_parameters():
    with pytest.raises(ValueError):
        SlidingWindowDecoder(load_audio_codec(), block_frames=0)


@pytest.mark.parametrize("backend", ["torch", pytest.param("onnx", marks=pytest.mark.slow), "own"])
def test_the_reply_decode_stage_streams_as_the_whole_reply_decodes(codec, tokens, backend):
    """Chat replies: blocks through a streaming decoder whose state is carried (the engine's, on its backend, or a
    reply decoder of its own, `own`: every session's block in one torch step on the engine's batched thread) give
    the whole sequence's decode; two replies at once each get their own; the end of a reply starts the next afresh."""
    import asyncio

    from talkstream.checkpoint import load_audio_codec as load
    from talkstream.streaming.codec_engine import CodecEngine
    from talkstream.streaming.stages import SlidingDecodeStage

    hop, k = codec.frame_size, tokens.shape[1]
    other = torch.flip(tokens, [-1])
    own = load() if backend == "own" else None  # another object: the stage's decoder of its own
    reference = own or codec

    async def reply(stage, toks):
        out = []
        for i in range(0, 36, 6):
            out += [o.pcm for o in await stage.process(toks[..., i : i + 6])]
        out += [o.pcm for o in await stage.process(None)]  # the end: nothing held back
        return torch.from_numpy(np.concatenate(out))

    async def main():
        engine = CodecEngine(codec, backend="torch" if backend == "own" else backend)
        engine.warmup()
        engine.start()
        a, b = SlidingDecodeStage(engine, k, codec=own), SlidingDecodeStage(engine, k, codec=own)
        assert (a.own is None) == (own is None)
        first = await asyncio.gather(reply(a, tokens), reply(b, other))
        again = await reply(a, tokens)  # after the end of a reply: from a fresh state
        await engine.stop()
        return first, again

    (pa, pb), again = asyncio.run(main())
    tol = 2e-2 if backend == "onnx" else 1e-4  # the server's int8 graphs
    for got, toks in ((pa, tokens), (pb, other), (again, tokens)):
        want = reference.decode(toks[..., :36])[0, 0]
        assert got.shape == want.shape == (36 * hop,)
        err = (got - want).abs().mean() / want.abs().mean()
        assert err < tol, err
