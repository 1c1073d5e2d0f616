"""Whole-file encode/decode between audio files and .tsk token files (what `talkstream encode/decode` run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from talkstream.audio_io import load_audio, save_audio
from talkstream.codecs.audio.codec import AudioCodec, align_output
from talkstream.codecs.container import ContainerError, read_tokens, write_tokens


def codec_header(codec: AudioCodec) -> dict:
    return {
        "kind": "audio",
        "codec_id": codec.cfg.codec_id,
        "sample_rate": codec.sample_rate,
        "frame_rate": codec.frame_rate,
        "frame_size": codec.frame_size,
        "codebook_size": codec.codebook_size,
        **({"pitch_bits": codec.cfg.pitch_bits} if codec.cfg.pitch_bits else {}),  # codec v4: row 0, the pitch
    }


def encode_file(codec: AudioCodec, src: str | Path, dst: str | Path, num_codebooks: int) -> dict:
    """Audio file (any common format/rate/channels) -> .tsk. Returns the header written."""
    audio = load_audio(src, codec.sample_rate)
    x = torch.from_numpy(audio)[None, None]
    # One frame of silence after the end lets the decoder finish the last real frame (see AudioCodec.reconstruct).
    codes = codec.encode(torch.nn.functional.pad(x, (0, codec.decode_delay)), num_codebooks)[0].numpy()
    header = {**codec_header(codec), "num_samples": int(audio.size)}
    write_tokens(dst, codes, header)
    return {**header, "num_codebooks": int(codes.shape[0]) - codec.pitch_rows, "num_frames": int(codes.shape[1])}


def decode_file(codec: AudioCodec, src: str | Path, dst: str | Path) -> dict:
    """.tsk -> WAV at the codec's rate. Refuses files made by another codec."""
    header, codes = read_tokens(src, "audio")
    if header["codec_id"] != codec.cfg.codec_id or header["codebook_size"] != codec.codebook_size:
        raise ContainerError(f"{src}: made by codec {header['codec_id']!r}, this is {codec.cfg.codec_id!r}")
    if int(header.get("pitch_bits", 0)) != codec.cfg.pitch_bits:
        raise ContainerError(
            f"{src}: pitch bits {header.get('pitch_bits', 0)}, this codec sends {codec.cfg.pitch_bits}"
        )
    books = codes.shape[0] - codec.pitch_rows
    if not 1 <= books <= codec.num_codebooks:
        raise ContainerError(f"{src}: {books} codebooks, this codec has 1..{codec.num_codebooks}")
    try:
        pcm = codec.decode(torch.from_numpy(codes)[None])
    except ValueError as e:  # codes the codec refuses (a pitch index beyond its bits)
        raise ContainerError(f"{src}: {e}") from None
    n = int(header.get("num_samples", codes.shape[1] * codec.frame_size))
    audio = align_output(pcm, codec.decode_delay, n)[0, 0].numpy()
    save_audio(dst, audio, codec.sample_rate)
    return {**header, "num_codebooks": books, "duration_s": float(np.round(n / codec.sample_rate, 3))}
