"""`talkstream demo`: a Gradio app to hear the codec and, once the models exist, to talk to the Thinker-Talker.

- Codec tab: record or upload speech, pick the number of codebooks (bitrate), hear the round trip, see bitrate,
  PESQ-WB and STOI against the input, and the input and output spectrograms side by side.
- Chat tab: speech in, transcript, reply text and reply speech out, through
  `talkstream.chat.responder.answer_wav(pcm, sample_rate) -> (transcript, reply_text, reply_pcm, reply_sample_rate)`.
  Until the models provide it, the tab says so and why.

`pip install '.[demo]'`. Both handlers are plain functions (`codec_roundtrip`, `chat_turn`) with API names
`/roundtrip` and `/chat`, so `gradio_client` drives the app as the tests do.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from talkstream.audio_io import AudioInputError, resample, sanitize, to_mono
from talkstream.bench.metrics import pesq_wb, stoi

MAX_SECONDS = 30.0
# A perceptual dark-to-light ramp (magma-like) for spectrogram images; no plotting library needed.
_RAMP = np.array([(0, 0, 4), (80, 18, 123), (182, 54, 121), (251, 136, 97), (252, 253, 191)], np.float32)

ChatFn = Callable[[np.ndarray, int], tuple[str, str, np.ndarray, int]]


def from_gradio(audio) -> tuple[np.ndarray, int]:
    """A path Gradio saved the upload or recording to (read by PyAV: MP3, FLAC, Ogg, WAV... without a system ffmpeg),
    or Gradio's (sample_rate, samples) with int or float samples, mono or [T, channels] -> (float32 mono, rate)."""
    if audio is None:
        raise AudioInputError("record or upload some speech first")
    if isinstance(audio, (str, Path)):
        from talkstream.audio_io import load_audio

        return load_audio(audio, 24_000), 24_000
    sr, data = audio
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    data = data.astype(np.float32)
    if data.ndim == 2:
        data = to_mono(data)
    data = sanitize(data, "recording")
    return data, int(sr)


def to_gradio(pcm: np.ndarray, sr: int) -> tuple[int, np.ndarray]:
    return sr, (np.clip(pcm, -1, 1) * 32767).astype(np.int16)


def stft_db(pcm: np.ndarray, sr: int, height: int = 256) -> np.ndarray:
    """Log-magnitude STFT in dB [height frequencies, frames], 5 ms hop."""
    n_fft, hop = 2 * (height - 1), max(sr // 200, 1)
    x = np.pad(pcm.astype(np.float32), (0, max(0, n_fft - pcm.size)))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft).astype(np.float32)
    return 20 * np.log10(np.abs(np.fft.rfft(frames, axis=-1)).T + 1e-6)


def spectrogram_image(db: np.ndarray, ref_db: float | None = None) -> np.ndarray:
    """dB [freq, time] -> RGB image [freq, time, 3], low frequencies at the bottom, 80 dB below `ref_db` (default:
    the peak) black. Give two images the same `ref_db` to compare them."""
    ref = float(db.max()) if ref_db is None else ref_db
    pos = np.clip((db - (ref - 80)) / 80, 0, 1)[::-1] * (len(_RAMP) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_RAMP) - 2)
    frac = (pos - lo)[..., None]
    return ((1 - frac) * _RAMP[lo] + frac * _RAMP[lo + 1]).astype(np.uint8)


def codec_roundtrip(codec, audio, codebooks: int) -> tuple[tuple[int, np.ndarray], str, np.ndarray, np.ndarray]:
    """(recording, codebooks) -> (decoded audio, a Markdown summary, input spectrogram, output spectrogram)."""
    pcm, sr = from_gradio(audio)
    note = ""
    if pcm.size > MAX_SECONDS * sr:
        pcm, note = pcm[: int(MAX_SECONDS * sr)], f" (first {MAX_SECONDS:.0f} s)"
    rate = codec.sample_rate
    x = resample(pcm, sr, rate)
    k = int(codebooks)
    with torch.inference_mode():
        y = codec.reconstruct(torch.from_numpy(x)[None, None], k)[0, 0].numpy()
    p, s = pesq_wb(x, y, rate), stoi(x, y, rate)
    summary = (
        f"**{k} codebooks: {codec.bitrate(k) / 1000:.2f} kbps** · PESQ-WB "
        f"{'n/a (no speech found)' if np.isnan(p) else f'{p:.2f}'} · STOI {s:.3f} · {x.size / rate:.2f} s{note} · "
        f"algorithmic latency {codec.algorithmic_latency_ms:.1f} ms"
    )
    db_in, db_out = stft_db(x, rate), stft_db(y, rate)
    peak = float(db_in.max())  # both images on the input's scale
    return to_gradio(y, rate), summary, spectrogram_image(db_in, peak), spectrogram_image(db_out, peak)


def default_chat_fn() -> tuple[ChatFn | None, str]:
    """The models' `answer_wav`, or None and the reason it is not there."""
    try:
        from talkstream.chat.responder import answer_wav
    except Exception as e:  # missing module or function, or a model that fails to import: say which
        return None, f"{type(e).__name__}: {e}"
    return answer_wav, ""


def chat_turn(chat_fn: ChatFn | None, why: str, audio) -> tuple[str, str, tuple[int, np.ndarray] | None, str]:
    """recording -> (transcript, reply text, reply audio, status line)."""
    if chat_fn is None:
        return (
            "",
            "",
            None,
            (
                "Chat is not available yet: it needs `talkstream.chat.responder.answer_wav` (the Thinker-Talker), "
                f"which could not be loaded ({why})."
            ),
        )
    pcm, sr = from_gradio(audio)
    transcript, reply, out, out_sr = chat_fn(pcm, sr)
    return transcript, reply, to_gradio(np.asarray(out, np.float32), int(out_sr)), "ok"


def build_demo(codec=None, chat_fn: ChatFn | None = None, chat_unavailable: str | None = None):
    """The Gradio Blocks app. `codec`: an AudioCodec or OnnxAudioCodec (default: the shipped one, torch);
    `chat_fn`: what the chat tab calls (default: the models' `answer_wav` if importable)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    if codec is None:
        from talkstream.checkpoint import load_audio_codec

        codec = load_audio_codec()
    why = chat_unavailable or ""
    if chat_fn is None and chat_unavailable is None:
        chat_fn, why = default_chat_fn()

    def roundtrip(audio, codebooks):
        try:
            return codec_roundtrip(codec, audio, codebooks)
        except AudioInputError as e:
            raise gr.Error(str(e)) from None

    def chat(audio):
        try:
            return chat_turn(chat_fn, why, audio)
        except AudioInputError as e:
            raise gr.Error(str(e)) from None

    with gr.Blocks(title="talkstream") as demo:
        gr.Markdown(
            f"# talkstream\nCausal neural speech codec: {codec.sample_rate // 1000} kHz, "
            f"{codec.frame_rate:.0f} frames/s, {codec.bitrate(1) / 1000:.2f} kbps per codebook, "
            f"{codec.algorithmic_latency_ms:.1f} ms algorithmic latency."
        )
        with gr.Tab("Codec"):
            with gr.Row():
                audio_in = gr.Audio(sources=["microphone", "upload"], type="filepath", label="Speech in")
                audio_out = gr.Audio(type="numpy", label="Decoded", interactive=False)
            codebooks = gr.Slider(1, codec.num_codebooks, value=codec.num_codebooks, step=1, label="Codebooks")
            run = gr.Button("Encode and decode", variant="primary")
            summary = gr.Markdown()
            with gr.Row():
                spec_in = gr.Image(type="numpy", label="Input spectrogram", interactive=False)
                spec_out = gr.Image(type="numpy", label="Decoded spectrogram", interactive=False)
            run.click(roundtrip, [audio_in, codebooks], [audio_out, summary, spec_in, spec_out], api_name="roundtrip")
        with gr.Tab("Chat"):
            gr.Markdown(
                "Speak, and the Thinker-Talker answers in speech."
                if chat_fn is not None
                else f"**Chat is not available yet**: `chat.responder.answer_wav` could not be loaded ({why})."
            )
            chat_in = gr.Audio(sources=["microphone", "upload"], type="filepath", label="You")
            talk = gr.Button("Send", variant="primary")
            transcript = gr.Textbox(label="Transcript", interactive=False)
            reply = gr.Textbox(label="Reply", interactive=False)
            reply_audio = gr.Audio(type="numpy", label="Reply speech", interactive=False)
            status = gr.Markdown()
            talk.click(chat, [chat_in], [transcript, reply, reply_audio, status], api_name="chat")
    return demo
