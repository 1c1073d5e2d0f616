"""Video over the WebSocket protocol (codec mode): RGB24 frames in, video tokens and the reconstruction out; video
tokens in, RGB24 out; bad frames answered with error codes while the session goes on."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch
from websockets.asyncio.client import connect

from talkstream.chat.protocol import ReplyFormat
from talkstream.checkpoint import load_audio_codec, load_video_codec
from talkstream.protocol import (
    FLAG_KEY,
    HEADER,
    KIND_RGB24,
    KIND_VIDEO_TOKENS,
    parse_binary,
    rgb_frame,
    video_token_frame,
)
from talkstream.services.app import ServerConfig, TalkstreamServer
from talkstream.streaming.vad import SileroVAD
from tests.chat.stubs import StubModel
from tests.conftest import moving_pattern, psnr

FRAMES = 6


@pytest.fixture(scope="module")
def models():
    return load_audio_codec(), SileroVAD(), load_video_codec()


def serve(models):
    codec, vad, video = models
    return TalkstreamServer(ServerConfig(port=0, thinker="echo"), codec=codec, vad=vad, video_codec=video)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def hello(ws, **kw) -> dict:
    await ws.send(json.dumps({"type": "hello", "version": 1, **kw}))
    return json.loads(await ws.recv())


async def receive(ws, n: int) -> tuple[list, list[dict]]:
    """The next n binary frames (parsed), and the events that came between them."""
    frames, events = [], []
    while len(frames) < n:
        msg = await ws.recv()
        if isinstance(msg, str):
            events.append(json.loads(msg))
        else:
            frames.append(parse_binary(msg))
    return frames, events


async def expect_error(ws) -> dict:
    while True:
        msg = await ws.recv()
        if isinstance(msg, str) and (ev := json.loads(msg))["type"] == "error":
            return ev


def test_rgb_frames_round_trip_and_tokens_decode_back(models):
    video = models[2]
    sent = [moving_pattern(i) for i in range(FRAMES)]

    async def main():
        async with serve(models) as srv:
            async with connect(srv.url) as ws:
                ready = await hello(ws, mode="codec", video_output=["tokens", "rgb"])
                back = []
                for i, rgb in enumerate(sent):  # lockstep: one frame, its answer, so none is dropped
                    await ws.send(rgb_frame(rgb, seq=i, timestamp=1000 + 40 * i))
                    back += (await receive(ws, 2))[0]
                await ws.send(json.dumps({"type": "end"}))
                summary = None
                async for msg in ws:
                    if isinstance(msg, str) and json.loads(msg)["type"] == "summary":
                        summary = json.loads(msg)
            async with connect(srv.url) as ws:  # tokens in: the same reconstruction, from the tokens alone
                await hello(ws, mode="codec", video_input="tokens")
                tokens = np.stack([f.video_tokens()[0] for f in back if f.kind == KIND_VIDEO_TOKENS])
                await ws.send(video_token_frame(tokens, seq=0, timestamp=7, flags=FLAG_KEY))
                decoded = (await receive(ws, FRAMES))[0]
                await ws.send(json.dumps({"type": "end"}))
                async for _ in ws:  # until the server closes, having freed the session
                    pass
            return ready, back, summary, decoded, len(srv.sessions)

    ready, back, summary, decoded, live = run(main())
    assert live == 0
    assert ready["video_codec"]["frame_size"] == [128, 128] and ready["video_output"] == ["tokens", "rgb"]
    assert [f.kind for f in back] == [KIND_VIDEO_TOKENS, KIND_RGB24] * FRAMES
    assert [f.timestamp for f in back[::2]] == [1000 + 40 * i for i in range(FRAMES)]  # the input's, echoed
    assert [f.flags for f in back[::2]] == [FLAG_KEY] + [0] * (FRAMES - 1)  # the stream starts with a key frame
    assert ready["video_codec"]["key_interval"] == 25
    tokens = np.stack([f.video_tokens()[0] for f in back[::2]])
    assert tokens.shape == (FRAMES, 256) and tokens.max() < 1000
    # The tokens are the offline encoder's on the same frames (streaming == offline, through the server).
    clip = torch.from_numpy(np.stack(sent)).permute(0, 3, 1, 2).float()[None] / 255
    offline = video.encode(clip)[0].numpy()
    assert (tokens == offline).mean() > 0.99
    rgbs = [f.rgb() for f in back[1::2]]
    quality = [psnr(a, b) for a, b in zip(sent, rgbs, strict=True)]
    assert min(quality) > 22, quality  # ~26 dB measured on this pattern
    assert summary["video"]["frames_in"] == summary["video"]["frames_out"] == FRAMES
    assert summary["video"]["drops"] == 0 and summary["video"]["codec_ms_p50"] > 0
    assert summary["stages"]["video_codec"]["frames_in"] == FRAMES
    assert all(f.kind == KIND_RGB24 and f.timestamp == 7 for f in decoded)
    for a, b in zip(rgbs, decoded, strict=True):
        np.testing.assert_array_equal(a, b.rgb())


def test_live_rgb_is_dropped_oldest_first_when_the_codec_is_behind(models):
    async def main():
        async with serve(models) as srv:
            async with connect(srv.url) as ws:
                await hello(ws, mode="codec", video_output="tokens")
                for i in range(30):  # all at once, far faster than the codec codes them
                    await ws.send(rgb_frame(moving_pattern(i), seq=i, timestamp=i))
                await ws.send(json.dumps({"type": "end"}))
                got = []
                async for msg in ws:
                    got.append(json.loads(msg) if isinstance(msg, str) else parse_binary(msg))
            metrics = srv.render_metrics().decode()
        return got, metrics

    got, metrics = run(main())
    summary = next(m for m in got if isinstance(m, dict) and m["type"] == "summary")["video"]
    sent_back = [m for m in got if not isinstance(m, dict)]
    assert summary["frames_in"] == 30 and summary["frames_out"] == len(sent_back) >= 1
    assert summary["frames_out"] + summary["drops"] == 30 and summary["drops"] > 0
    stamps = [f.timestamp for f in sent_back]
    assert stamps == sorted(stamps) and stamps[-1] == 29  # the newest frame is never the one dropped
    assert 'talkstream_stage_drops_total{stage="video_codec"}' in metrics


BAD = {
    "wrong-size": (rgb_frame(np.zeros((64, 64, 3), np.uint8), 0, 0), "bad_header"),
    "short-header": (HEADER.pack(KIND_RGB24, 1, 1, 0, 0, 0)[:7], "bad_header"),
    "oversized": (rgb_frame(np.zeros((200, 200, 3), np.uint8), 0, 0), "too_large"),  # 120 kB, over 64 KiB
    "wrong-input-kind": (video_token_frame(np.zeros((1, 256)), 0, 0), "bad_header"),  # tokens to an RGB session
    "unknown-kind": (HEADER.pack(5, 1, 1, 0, 0, 0), "unknown_kind"),
}


def test_bad_video_frames_get_an_error_and_the_session_goes_on(models):
    async def main():
        answers = {}
        async with serve(models) as srv:
            async with connect(srv.url) as ws:
                await hello(ws, mode="codec")
                for i, (name, (message, _)) in enumerate(BAD.items()):
                    await ws.send(message)
                    error = await expect_error(ws)
                    await ws.send(rgb_frame(moving_pattern(i), seq=i, timestamp=i))  # still served
                    answers[name] = error, (await receive(ws, 1))[0][0]
        return answers

    answers = run(main())
    for i, (name, (error, after)) in enumerate(answers.items()):
        assert error["code"] == BAD[name][1] and not error["fatal"] and error["message"], (name, error)
        assert after.kind == KIND_RGB24 and after.timestamp == i, name
    assert "128x128" in answers["wrong-size"][0]["message"]


class SeeingResponder(StubModel):
    """A chat responder whose Thinker sees video: records what each turn was given, answers with a short beep."""

    reply_format = ReplyFormat(num_codebooks=4, sees_video=True)

    def __init__(self):
        super().__init__()
        self.turns: list[tuple[int, torch.Tensor | None]] = []

    async def respond(self, turn, video=None):
        self.turns.append((turn.shape[-1], video))
        yield torch.zeros(1, 4, 6, dtype=torch.long)


def test_chat_mode_gives_the_thinker_what_the_camera_showed_during_the_turn(models):
    """Chat over the WebSocket with RGB frames beside the speech: nothing comes back for the frames; the turn's
    answer gets the video tokens of the turn's time span, at the codec's frame rate."""
    from talkstream.audio_io import load_audio
    from talkstream.data import SAMPLE_WAV
    from talkstream.protocol import pcm_frame

    codec, vad, video = models
    responder = SeeingResponder()
    speech = load_audio(SAMPLE_WAV, 24_000)
    audio = np.concatenate([np.zeros(12_000, np.float32), speech, np.zeros(36_000, np.float32)])
    pcm = np.round(np.clip(audio, -1, 32767 / 32768) * 32768).astype(np.int16)

    async def main():
        async with TalkstreamServer(ServerConfig(port=0), codec=codec, vad=vad, video_codec=video,
                                    responder=responder) as srv:
            async with connect(srv.url) as ws:
                await hello(ws, mode="chat", sample_rate=24_000)
                events = []

                async def listen():
                    async for msg in ws:
                        if isinstance(msg, str):
                            events.append(json.loads(msg))

                reader = asyncio.ensure_future(listen())
                t0 = asyncio.get_running_loop().time()
                for i in range(0, len(pcm), 480):  # 20 ms of audio, and a camera frame every 40 ms, in real time
                    await ws.send(pcm_frame(pcm[i : i + 480], i // 480, i // 24))
                    if (i // 480) % 2 == 0:
                        await ws.send(rgb_frame(moving_pattern(i // 960), i // 960, i // 24))
                    await asyncio.sleep(max(0.0, t0 + (i + 480) / 24_000 - asyncio.get_running_loop().time()))
                await asyncio.sleep(1.0)
                reader.cancel()
                return events

    events = run(main())
    assert not [e for e in events if e["type"] == "error"], events
    assert responder.turns, "the speech made a turn"
    frames, seen = responder.turns[0]
    assert seen is not None and seen.shape[1] == 256 and seen.dtype == torch.int64
    assert abs(seen.shape[0] - frames / 75 * 25) <= 1  # the turn's span at 25 fps
    reply = next(e for e in events if e["type"] == "reply" and e["state"] == "start")
    assert reply["video_frames"] == seen.shape[0]

