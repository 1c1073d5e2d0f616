"""Training runs end to end on any folder of audio, checkpoints, resumes where it stopped, and exports weights."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
import torch

from talkstream.checkpoint import load_audio_codec
from talkstream.codecs.audio.train import TrainConfig, train_codec
from talkstream.errors import UserError
from tests.conftest import TINY, speechlike

pytestmark = pytest.mark.slow  # docs/tests.md: the fast tier is -m 'not slow'


def test_train_resume_export(tmp_path):
    data = tmp_path / "audio"
    (data / "sub").mkdir(parents=True)
    for i in range(4):
        sf.write(data / "sub" / f"{i}.wav", speechlike(1.0, sr=16_000, seed=i), 16_000)  # resampled on load
    (data / "notes.txt").write_text("not audio, ignored")
    cfg = TrainConfig(
        data=str(data), out=str(tmp_path / "run"), steps=4, warmup_steps=2, batch_size=2, segment_seconds=0.2, threads=1
    )
    export = train_codec(cfg, TINY)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 4
    # Resuming with a longer schedule continues from step 4, not from zero, with the same model config.
    train_codec(TrainConfig(**{**cfg.__dict__, "steps": 6}), None)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 6 and ckpt["model_config"]["codec_id"] == TINY.codec_id
    codec = load_audio_codec(export)
    codes = codec.encode(torch.from_numpy(speechlike(0.5))[None, None], 4)
    assert codes.shape == (1, 4, 38)
    # After warm-up the codebooks were k-means initialised from latents: more than one code in use.
    assert codes[0, 0].unique().numel() > 1
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["steps"] == 6


def _first_stage(tmp_path, steps: int) -> tuple[TrainConfig, object]:
    """A tiny codec trained a few steps on three files: the --init of a decoder-only run. -> (its config, export)"""
    data = tmp_path / "audio"
    data.mkdir()
    for i in range(3):
        sf.write(data / f"{i}.wav", speechlike(1.0, seed=i), 24_000)
    first = TrainConfig(data=str(data), out=str(tmp_path / "a"), steps=steps, warmup_steps=1, batch_size=2,
                        segment_seconds=0.2, threads=1)
    return first, train_codec(first, TINY)


def test_decoder_only_keeps_the_tokens(tmp_path):
    """--decoder-only changes the decoder and nothing else: the same audio gives the same tokens before and after, so
    what was trained on the tokens (the Talker) keeps working; without a codec to start from it is refused."""
    first, start = _first_stage(tmp_path, steps=3)
    cfg = TrainConfig(**{**first.__dict__, "out": str(tmp_path / "b"), "steps": 3, "lr": 1e-2, "init": str(start),
                         "decoder_only": True})
    tuned = load_audio_codec(train_codec(cfg))
    before = load_audio_codec(start)
    x = torch.from_numpy(speechlike(0.5, seed=9))[None, None]
    assert torch.equal(before.encode(x, 4), tuned.encode(x, 4))
    assert torch.equal(before.quantizer.embed, tuned.quantizer.embed)
    # (the EMA statistics are rebuilt from the codebooks at a warm start; they take no part in coding)
    ema = ("quantizer.embed_sum", "quantizer.cluster_size")
    changed = [n for n, p in tuned.state_dict().items() if n not in ema and not torch.equal(p, before.state_dict()[n])]
    assert changed and all(n.startswith("decoder.") for n in changed)
    with pytest.raises(UserError, match="--init"):  # the user's mistake: a one-line error
        train_codec(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "c"), "init": ""}), TINY)


def test_decoder_only_widens_the_decoder_and_resumes_wide(tmp_path):
    """--init with --subframes 2: the run trains a two-window decoder for the same tokens, and its export and its
    resume keep the two windows."""
    first, start = _first_stage(tmp_path, steps=2)
    cfg = TrainConfig(**{**first.__dict__, "out": str(tmp_path / "b"), "steps": 2, "init": str(start),
                         "decoder_only": True, "decoder_subframes": 2})
    wide = load_audio_codec(train_codec(cfg))
    assert wide.cfg.decoder_subframes == 2
    x = torch.from_numpy(speechlike(0.5, seed=9))[None, None]
    assert torch.equal(load_audio_codec(start).encode(x, 4), wide.encode(x, 4))
    resumed = load_audio_codec(train_codec(TrainConfig(**{**cfg.__dict__, "steps": 3})))
    assert resumed.cfg.decoder_subframes == 2
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["step"] == 3
