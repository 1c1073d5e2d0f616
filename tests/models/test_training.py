"""The Thinker's and the Talker's training: runs on a few made-up examples, checkpoints, resumes where it stopped,
exports weights the loaders accept; `train model` runs both."""

from __future__ import annotations

import json

import torch

from talkstream.models.loaders import load_talker, load_thinker
from talkstream.models.train import TrainConfig, train
from talkstream.services.cli import main


def _data(folder):
    g = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    turns = [{"codes": torch.randint(0, 1024, (8, 40 + 8 * i), generator=g, dtype=torch.int16),
              "text": "what is two plus two", "answer": "two plus two is four." if i % 2 else None, "voice": "x"}
             for i in range(6)]
    spoken = [{"codes": torch.randint(0, 1024, (8, 30), generator=g, dtype=torch.int16), "text": "hello there.",
               "phonemes": ["_", "h", "@", "l", "oU", "D", "e@", "_:", "_"], "words": [-1, 0, 0, 0, 0, 1, 1, -1, -1],
               "durations": torch.tensor([2, 3, 3, 4, 5, 4, 5, 2, 2])} for _ in range(4)]
    for name, items in (("thinker", turns), ("talker", spoken)):
        torch.save(items, folder / f"{name}_train.pt")
        torch.save(items[:2], folder / f"{name}_eval.pt")
    return folder


def test_thinker_and_talker_train_checkpoint_resume_and_export(tmp_path, capsys):
    data = _data(tmp_path / "data")
    for kind in ("thinker", "talker"):
        run = tmp_path / kind
        cfg = TrainConfig(steps=2, batch_size=2, dim=32, layers=1, save_every=1, eval_every=2, warmup=1, crop=16)
        train(kind, data, run, cfg)
        first = torch.load(run / "last.pt", weights_only=False)
        assert first["step"] == 2 and len(first["history"]) == 1
        out = train(kind, data, run, TrainConfig(**{**cfg.__dict__, "steps": 3}))
        assert f"resumed {kind} from" in capsys.readouterr().err
        assert torch.load(run / "last.pt", weights_only=False)["step"] == 3
        model = (load_thinker if kind == "thinker" else load_talker)(out)
        assert sum(p.numel() for p in model.parameters()) > 0
        assert json.loads((out / "training.json").read_text())["steps"] == 3
    # The Talker's dual track came from the shipped Thinker, computed once and cached by its weights' checksum.
    cache = torch.load(tmp_path / "talker" / "thinker_hidden_train.pt", weights_only=False)
    assert all(h is not None and h.shape == (9, 192) for h in cache["hidden"])


def test_train_model_trains_both(tmp_path, capsys):
    data = _data(tmp_path / "data")
    argv = ["train", "model", "--data", str(data), "--runs", str(tmp_path / "runs"), "--thinker-steps", "1",
            "--talker-steps", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "thinker weights exported" in printed and "talker weights exported" in printed
    assert (tmp_path / "runs" / "thinker" / "export" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "talker" / "export" / "model.safetensors").is_file()
