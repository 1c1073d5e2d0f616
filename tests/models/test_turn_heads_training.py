"""The turn heads' trainer (talkstream/training/turn_heads.py): what it reads from turn_data's files and its cache."""

import numpy as np
import pytest
import torch

from talkstream.training import turn_heads
from talkstream.training.turn_data import BARGE_BEFORE_S, BARGE_WINDOW_S, RATE


def _write(path, n=3, seed=0):
    g = np.random.default_rng(seed)
    x = (0.1 * g.standard_normal((n, int(BARGE_WINDOW_S * RATE)))).astype(np.float16)
    np.savez_compressed(path, barge_x=x, barge_y=np.arange(n) % 2, barge_kind=np.array(["Yeah."] * n),
                        end_x=x[:, :100], end_y=np.ones(n), end_kind=np.array(["complete"] * n), voice="espeak:x")
    return x.astype(np.float32)


def test_training_barge_windows_are_also_cut_shorter_and_eval_ones_are_not(tmp_path):
    x = _write(tmp_path / "train-a.npz")
    xs, ys, kinds, voices = turn_heads._load_file(tmp_path / "train-a.npz", "barge")
    assert len(xs) == 6 and list(ys) == [0, 1, 0, 0, 1, 0] and kinds == ["Yeah."] * 6 and voices == ["espeak:x"] * 6
    for original, short in zip(xs[:3], xs[3:], strict=True):
        kept = np.flatnonzero(short)[-1] / RATE - BARGE_BEFORE_S  # speech kept after the onset
        assert turn_heads.SHORT_BARGE_S[0] - 0.01 < kept < turn_heads.SHORT_BARGE_S[1]
        np.testing.assert_array_equal(short[: np.flatnonzero(short)[-1]], original[: np.flatnonzero(short)[-1]])
    np.testing.assert_array_equal(np.stack(xs[:3]), x)
    # The same cuts every run (the cache holds their encoder states).
    again = turn_heads._load_file(tmp_path / "train-a.npz", "barge")[0]
    np.testing.assert_array_equal(np.stack(again), np.stack(xs))

    _write(tmp_path / "eval-b.npz")
    assert len(turn_heads._load_file(tmp_path / "eval-b.npz", "barge")[0]) == 3
    assert len(turn_heads._load_file(tmp_path / "train-a.npz", "end")[0]) == 3  # end windows as they are


def test_the_feature_cache_encodes_only_new_files(tmp_path, monkeypatch):
    calls = []

    def fake_states(windows, window_s, align, batch=16):
        calls.append(len(windows))
        return torch.stack([torch.full((round(window_s * 50), 384), float(w[0])) for w in windows]).half()

    monkeypatch.setattr(turn_heads, "encoder_states", fake_states)
    _write(tmp_path / "train-a.npz", seed=1)
    first = turn_heads.features(tmp_path, "train", "end")
    assert calls == [3] and first["states"].shape == (3, 150, 384)
    _write(tmp_path / "train-b.npz", seed=2)
    second = turn_heads.features(tmp_path, "train", "end")
    assert calls == [3, 3]  # only the new file was encoded
    assert torch.equal(second["states"][:3], first["states"]) and len(second["voices"]) == 6
    turn_heads.features(tmp_path, "train", "end")
    assert calls == [3, 3]


@pytest.mark.parametrize("task", ["end", "barge"])
def test_an_older_cache_layout_is_split_by_file_not_encoded_again(tmp_path, monkeypatch, task):
    _write(tmp_path / "train-a.npz", seed=1)
    _write(tmp_path / "train-b.npz", seed=2)
    n = 6 if task == "barge" else 3  # per file, the barge windows twice (cut shorter too)
    states = torch.arange(2 * n, dtype=torch.float16).view(-1, 1, 1).expand(2 * n, 2, 3).clone()
    torch.save({"version": turn_heads.FEATURES_VERSION[task], "files": ["train-a.npz", "train-b.npz"],
                "states": states, "y": torch.zeros(2 * n), "kinds": ["k"] * (2 * n), "voices": ["v"] * (2 * n)},
               tmp_path / f"features-train-{task}.pt")
    monkeypatch.setattr(turn_heads, "encoder_states", lambda *a, **k: pytest.fail("encoded again"))
    got = turn_heads.features(tmp_path, "train", task)
    assert torch.equal(got["states"], states)
