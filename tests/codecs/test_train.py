"""Training runs end to end on any folder of audio, checkpoints, resumes where it stopped, and exports weights."""

from __future__ import annotations

import json

import soundfile as sf
import torch

from talkstream.checkpoint import load_audio_codec
from talkstream.codecs.audio.train import TrainConfig, train_codec
from tests.conftest import TINY, speechlike


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
