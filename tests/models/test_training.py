"""The Thinker's training: runs on a few made-up examples, checkpoints, resumes where it stopped, exports weights
the loader accepts (the Talker's: test_train_talker.py)."""

from __future__ import annotations

import json

import torch

from talkstream.checkpoint import load_thinker
from talkstream.models.train import TrainConfig, train


def _data(folder):
    g = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    turns = [{"codes": torch.randint(0, 1024, (8, 40 + 8 * i), generator=g, dtype=torch.int16),
              "text": "what is two plus two", "answer": "two plus two is four." if i % 2 else None, "voice": "x"}
             for i in range(6)]
    torch.save(turns, folder / "thinker_train.pt")
    torch.save(turns[:2], folder / "thinker_eval.pt")
    return folder


def test_thinker_trains_checkpoints_resumes_and_exports(tmp_path, capsys):
    data = _data(tmp_path / "data")
    for kind in ("thinker",):
        run = tmp_path / kind
        cfg = TrainConfig(steps=2, batch_size=2, dim=32, layers=1, save_every=1, eval_every=2, warmup=1, crop=16)
        train(kind, data, run, cfg)
        first = torch.load(run / "last.pt", weights_only=False)
        assert first["step"] == 2 and len(first["history"]) == 1
        out = train(kind, data, run, TrainConfig(**{**cfg.__dict__, "steps": 3}))
        assert f"resumed {kind} from" in capsys.readouterr().err
        assert torch.load(run / "last.pt", weights_only=False)["step"] == 3
        model = load_thinker(out)  # the exported weights are the run's last (shipped as float16), in its shape
        assert (model.cfg.dim, model.cfg.layers) == (32, 1)
        last = torch.load(run / "last.pt", weights_only=False)["model"]
        torch.testing.assert_close(model.state_dict(), last, rtol=1e-3, atol=1e-4)
        assert json.loads((out / "training.json").read_text())["steps"] == 3
