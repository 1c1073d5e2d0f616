"""`talkstream roundtrip`: a file through the codec at several bitrates, scored with PESQ-WB and STOI.

Any length: the codec runs as it streams, CHUNK_S at a time (streaming equals offline, tested), so memory holds the
audio and one chunk's activations instead of the whole file's (a 10-minute file took 2.4 GB offline); the metrics
score long audio in pieces (talkstream.bench.metrics). The files written are what `encode` and `decode` write.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from talkstream.audio_io import save_audio
from talkstream.bench.metrics import pesq_wb, stoi
from talkstream.codecs.audio.files import codec_header
from talkstream.codecs.container import write_tokens

CHUNK_S = 20.0


@dataclass
class Result:
    codebooks: int
    kbps: float
    pesq_wb: float
    stoi: float
    wav: Path


def _chunks(audio: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, audio.size, size):
        yield audio[i : i + size]


@torch.inference_mode()
def stream_roundtrip(codec, audio: np.ndarray, num_codebooks: int, chunk_s: float = CHUNK_S, progress: bool = False
                     ) -> tuple[np.ndarray, np.ndarray]:
    """audio float32 [T] -> (codes int64 [K, F], decoded float32 [T] aligned with the input), as encode_file and
    decode_file give them, computed `chunk_s` seconds at a time."""
    hop = codec.frame_size
    # One frame of silence after the end lets the decoder finish the last real frame; then whole frames.
    x = np.pad(audio, (0, codec.decode_delay + (-(audio.size + codec.decode_delay)) % hop))
    enc, dec = codec.init_state(1, num_codebooks), codec.init_state(1)
    codes, out = [], []
    size = max(hop, int(chunk_s * codec.sample_rate) // hop * hop)
    for piece in tqdm(list(_chunks(x, size)), desc=f"{num_codebooks} codebooks", unit="chunk", leave=False,
                      disable=not progress or x.size <= size):
        c, enc = codec.encode_step(torch.from_numpy(np.ascontiguousarray(piece))[None, None], enc)
        pcm, dec = codec.decode_step(c, dec)
        codes.append(c[0].numpy())
        out.append(pcm[0, 0].numpy())
    decoded = np.concatenate(out)[codec.decode_delay : codec.decode_delay + audio.size]
    return np.concatenate(codes, axis=1), np.pad(decoded, (0, audio.size - decoded.size))


def roundtrip(codec, ref: np.ndarray, out: Path, codebooks: list[int], progress: bool = False) -> Iterator[Result]:
    """`ref` float32 [T] at the codec's rate through each codebook count: one Result each, with the files
    `<out>.<k>cb.tsk` and `<out>.<k>cb.wav` written."""
    for k in codebooks:
        codes, deg = stream_roundtrip(codec, ref, k, progress=progress)
        tsk, wav = out.with_name(f"{out.name}.{k}cb.tsk"), out.with_name(f"{out.name}.{k}cb.wav")
        write_tokens(tsk, codes, {**codec_header(codec), "num_samples": int(ref.size)})
        save_audio(wav, deg, codec.sample_rate)
        yield Result(k, codec.bitrate(k) / 1000, pesq_wb(ref, deg, codec.sample_rate),
                     stoi(ref, deg, codec.sample_rate), wav)
