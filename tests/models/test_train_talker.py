"""The Talker's training on made-up examples of `talkstream data talker`'s shape: it learns, checkpoints, resumes,
and exports weights the loader accepts, speaking in the codec's own codebooks."""

from __future__ import annotations

import json

import pytest
import torch

from talkstream.checkpoint import load_audio_codec, load_talker
from talkstream.errors import UserError
from talkstream.models.talker_units import text_units
from talkstream.models.train import TrainConfig
from talkstream.models.train_talker import UnitBatches, attach_talker_latents, predict_latent, train_talker


def _data(folder, codec):
    g = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for text in ("hello there.", "seven apples, please.", "two plus two is four."):
        units = text_units(text)
        dur = torch.randint(1, 4, (len(units),), generator=g)
        # A latent the units decide (each unit's own vector), so there is something to learn.
        vectors = {u: torch.randn(codec.cfg.latent_dim, generator=g) for u in units}
        latent = torch.stack([vectors[u] for u, d in zip(units, dur.tolist(), strict=True) for _ in range(d)], 1)
        items.append({"text": text, "units": units, "durations": dur, "latent": latent.half(),
                      "audio": torch.zeros(int(dur.sum()) * codec.cfg.hop, dtype=torch.int16)})
    torch.save(items, folder / "train_000.pt")
    torch.save(items[:1], folder / "eval_000.pt")
    return folder


@pytest.mark.slow
def test_talker_trains_checkpoints_resumes_and_exports(tmp_path, capsys):
    codec = load_audio_codec()
    data, run = _data(tmp_path / "data", codec), tmp_path / "run"
    cfg = TrainConfig(steps=2, batch_size=2, dim=32, layers=1, save_every=1, eval_every=2, warmup=1, crop=64)
    train_talker(data, run, cfg, codec)
    first = torch.load(run / "last.pt", weights_only=False)
    assert first["step"] == 2 and set(first["history"][0]) >= {"eval_l1", "eval_acc0", "eval_acc1"}
    out = train_talker(data, run, TrainConfig(**{**cfg.__dict__, "steps": 40, "lr": 3e-3}), codec)
    assert "resumed the Talker from" in capsys.readouterr().err
    history = torch.load(run / "last.pt", weights_only=False)["history"]
    assert history[-1]["eval_l1"] < history[0]["eval_l1"]  # it learns the latent
    talker = load_talker(out)
    assert torch.equal(talker.codebooks, codec.quantizer.embed)  # its tokens are the codec's
    assert talker.cfg.codec_id == codec.cfg.codec_id
    assert talker.cfg.speaker == "piper:en_US-joe"  # a folder without voice.json holds joe's speech
    assert json.loads((out / "training.json").read_text())["steps"] == 40
    # Streaming frames with the true durations are the teacher-timed pass's latent, quantized.
    item = torch.load(data / "eval_000.pt", weights_only=False)[0]
    ids = talker.phoneme_ids(item["units"])
    frames = torch.stack(list(talker.frames(ids, None, durations=item["durations"])))
    one = UnitBatches([item], talker, crop=10**6, seed=0)
    with torch.no_grad():
        z, _ = predict_latent(talker, one.collate(one.items, random_crop=False))
    assert torch.equal(frames, talker.quantize(z[0]))


def test_talker_latents_are_cached_in_a_fresh_run_folder(tmp_path):
    """`train voice --talker` on a new run: the Talker's latents line up frame for frame with each example and are
    cached in the run folder, which does not exist yet (it crashed there once, after computing them all)."""
    codec = load_audio_codec()
    data, run = _data(tmp_path / "data", codec), tmp_path / "run"
    out = train_talker(data, run, TrainConfig(steps=2, batch_size=2, dim=32, layers=1, save_every=2, eval_every=2,
                                              warmup=1, crop=64), codec)
    items = torch.load(data / "train_000.pt", weights_only=False)
    cache = tmp_path / "voice_run" / "talker_latents.pt"
    attach_talker_latents(items, out, cache)
    assert cache.is_file()
    for it in items:
        assert it["talker_latent"].shape == it["latent"].shape
    again = torch.load(data / "train_000.pt", weights_only=False)
    attach_talker_latents(again, out, cache)  # read back from the cache, the same latents
    assert all(torch.equal(a["talker_latent"], b["talker_latent"]) for a, b in zip(items, again, strict=True))


def test_the_talker_learns_whose_voice_the_data_holds_and_a_build_never_mixes_two(tmp_path):
    from talkstream.models.talker_data import build_talker_data, talker_speaker

    codec = load_audio_codec()
    data, run = _data(tmp_path / "data", codec), tmp_path / "run"
    (data / "voice.json").write_text(json.dumps({"speaker": "kokoro:jm_kumo"}))
    assert talker_speaker(data) == "kokoro:jm_kumo"
    out = train_talker(data, run, TrainConfig(steps=1, batch_size=2, dim=32, layers=1, warmup=1, crop=64), codec)
    assert load_talker(out).cfg.speaker == "kokoro:jm_kumo"
    # Resuming a build in another voice is refused before anything is spoken or written.
    before = sorted(p.name for p in data.iterdir())
    with pytest.raises(UserError, match="holds kokoro:jm_kumo's speech"):
        build_talker_data(data, codec, speaker="piper:en_US-joe")
    assert sorted(p.name for p in data.iterdir()) == before
    with pytest.raises(UserError, match="no Talker voice"):
        build_talker_data(tmp_path / "new", codec, speaker="espeak:en-us")
    assert not (tmp_path / "new").exists()


def test_a_talker_warm_starts_from_another_voices_talker_unit_by_unit(tmp_path, capsys):
    from talkstream.models.train_talker import warm_start

    codec = load_audio_codec()
    data = _data(tmp_path / "data", codec)
    cfg = TrainConfig(steps=3, batch_size=2, dim=32, layers=1, warmup=1, crop=64, lr=3e-3)
    old = load_talker(train_talker(data, tmp_path / "old", cfg, codec))
    # The new voice's data reads one unit the old Talker never saw and lacks some it did.
    items = torch.load(data / "train_000.pt", weights_only=False)
    items[0]["units"] = ["ʔ" if u == "h" else u for u in items[0]["units"]]
    torch.save(items, data / "train_000.pt")
    new = load_talker(train_talker(data, tmp_path / "new", TrainConfig(**{**cfg.__dict__, "steps": 0,
                                                                          "init": str(tmp_path / "old/export")}),
                                   codec))
    assert "warm start from" in capsys.readouterr().err
    assert "ʔ" in new.phoneme_index and "ʔ" not in old.phoneme_index
    for unit in ("s", "ˈ", " "):
        assert torch.equal(new.phoneme_embed.weight[new.phoneme_index[unit]],
                           old.phoneme_embed.weight[old.phoneme_index[unit]])
    assert torch.equal(new.state_dict()["text_conv.0.weight"], old.state_dict()["text_conv.0.weight"])
    with pytest.raises(UserError, match="width 32"):
        from talkstream.models.talker import Talker, TalkerConfig

        warm_start(Talker(TalkerConfig(phonemes=new.cfg.phonemes, dim=64, layers=1)), tmp_path / "old/export")
