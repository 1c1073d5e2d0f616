"""`talkstream export codec`, the manifest and its checks, provider selection, and the CLI's onnx backend.

A tiny random codec keeps exports fast; the shipped codec's parity is tests/export/test_onnx_parity.py.
"""

from __future__ import annotations

import json
import logging
import shutil

import onnx
import onnxruntime as ort
import pytest
import soundfile as sf
import torch

from talkstream.checkpoint import save_checkpoint
from talkstream.cli import main
from talkstream.codecs.audio.codec import AudioCodec
from talkstream.codecs.audio.onnx_step import OnnxAudioCodec, OnnxCodecSteps, export_codec
from talkstream.export import providers as prov
from talkstream.export.graphs import ExportError, read_manifest, talkstream_version
from talkstream.export.providers import ProviderError, open_session, select_providers, session_options
from tests.conftest import TINY, speechlike


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One tiny codec and one export of it for the module; tests that damage the export get their own copy."""
    torch.manual_seed(0)
    codec = AudioCodec(TINY).eval()
    out = tmp_path_factory.mktemp("export") / "onnx"
    manifest = export_codec(codec, out, codebooks=[2], frames_per_step=[1, 3], ops=("encode", "decode"), int8=True)
    return codec, out, manifest


@pytest.fixture
def tiny_codec(tiny):
    return tiny[0]


@pytest.fixture
def exported(tiny, tmp_path):
    shutil.copytree(tiny[1], tmp_path / "onnx")
    return tmp_path / "onnx", tiny[2]


def test_export_writes_checked_graphs_and_a_manifest(tiny_codec, exported):
    out, manifest = exported
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["opset"] == 17 and on_disk["component"] == "codec"
    assert on_disk["talkstream_version"] == talkstream_version()
    assert on_disk["source"]["codec_id"] == TINY.codec_id
    names = {(g["name"], g["precision"]) for g in on_disk["graphs"]}
    assert names == {
        (f"codec.{op}.k2.f{f}", p) for op in ("encode", "decode") for f in (1, 3) for p in ("fp32", "int8")
    }
    dec = next(g for g in on_disk["graphs"] if g["name"] == "codec.decode.k2.f3" and g["precision"] == "fp32")
    ins = {i["name"]: i for i in dec["inputs"]}
    outs = {o["name"]: o for o in dec["outputs"]}
    assert ins["codes"]["shape"] == ["batch", 2, 3] and ins["codes"]["dtype"] == "int64"
    assert outs["pcm"]["shape"] == ["batch", 1, 3 * tiny_codec.frame_size]
    n_dec = len(tiny_codec.init_state(1).decoder)
    tail = f"next_dec_state{n_dec - 1}"  # the overlap-add tail: explicit state, real length in the manifest
    assert outs[tail]["shape"] == ["batch", tiny_codec.frame_size]
    for g in on_disk["graphs"]:
        onnx.checker.check_model(str(out / g["file"]), full_check=True)


def test_graphs_have_no_grouped_conv(exported):
    """onnxruntime runs a grouped conv as one small GEMM per channel and batch row (most of a batched step); the
    export writes the ConvNeXt blocks' depthwise convs as taps instead (modules.step_depthwise_time_major)."""
    out, _ = exported
    for g in json.loads((out / "manifest.json").read_text())["graphs"]:
        model = onnx.load(str(out / g["file"]))
        groups = [a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
        assert all(gr == 1 for gr in groups), (g["name"], groups)


@pytest.mark.parametrize("encoder", ["conv", "mel"])
def test_graphs_compute_no_shapes_per_step(encoder):
    """Lengths are fixed per graph and every reshape keeps the batch as -1, so a step does no shape arithmetic:
    Shape nodes and the small kernels after them were a third of the shipped roundtrip graph's 314 kernels."""
    from dataclasses import replace

    from talkstream.codecs.audio.onnx_step import codec_graph_spec
    from talkstream.export.graphs import export_bytes

    torch.manual_seed(0)
    codec = AudioCodec(replace(TINY, encoder=encoder)).eval()
    for op in ("encode", "decode", "roundtrip"):
        model = onnx.load_from_string(export_bytes(codec_graph_spec(codec, op, TINY.num_codebooks, 2)))
        ops = [n.op_type for n in model.graph.node]
        assert "Shape" not in ops and "ConstantOfShape" not in ops, (op, sorted(set(ops)))


def test_graphs_from_the_folder_equal_in_memory_ones(tiny_codec, exported):
    out, _ = exported
    x = torch.from_numpy(speechlike(0.3, seed=4))[None, None]
    from_dir = OnnxAudioCodec(tiny_codec, OnnxCodecSteps(tiny_codec, export_dir=out))
    in_memory = OnnxAudioCodec(tiny_codec, OnnxCodecSteps(tiny_codec))
    assert from_dir.steps.frames_available("encode", 2) == [3, 1]
    codes = from_dir.encode(x, 2)
    torch.testing.assert_close(codes, in_memory.encode(x, 2))
    torch.testing.assert_close(from_dir.decode(codes), in_memory.decode(codes), atol=1e-6, rtol=0)


def test_a_configuration_not_exported_is_made_in_memory_and_logged(tiny_codec, exported, caplog):
    out, _ = exported
    steps = OnnxCodecSteps(tiny_codec, export_dir=out)
    with caplog.at_level(logging.WARNING):
        codes, _, _ = steps.step("encode", torch.zeros(1, 1, 2 * tiny_codec.frame_size), tiny_codec.init_state(1, 4))
    assert codes.shape == (1, 4, 2)
    assert "codec.encode.k4.f2 (fp32) is not in" in caplog.text


def _edit_manifest(out, fn):
    m = json.loads((out / "manifest.json").read_text())
    fn(m)
    (out / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda out: (out / "codec.decode.k2.f1.onnx").unlink(), "graph file missing"),
        (lambda out: (out / "codec.encode.k2.f3.int8.onnx").write_bytes(b"\x08\x07garbage"), "checksum mismatch"),
        (lambda out: _edit_manifest(out, lambda m: m["graphs"][0].update(sha256="0" * 64)), "checksum mismatch"),
        (lambda out: _edit_manifest(out, lambda m: m.update(talkstream_version="0.0.1")), "talkstream '0.0.1'"),
        (lambda out: _edit_manifest(out, lambda m: m.update(format_version=99)), "manifest format 99"),
        (lambda out: _edit_manifest(out, lambda m: m.update(component="model")), "holds 'model' graphs"),
        (lambda out: (out / "manifest.json").write_text("{not json"), "unreadable"),
        (lambda out: _edit_manifest(out, lambda m: m["graphs"][1].pop("sha256")), "malformed graph list"),
        (lambda out: (out / "manifest.json").unlink(), "not a talkstream ONNX export"),
    ],
    ids=[
        "missing-file",
        "corrupted-file",
        "checksum-mismatch",
        "other-version",
        "other-format",
        "other-component",
        "bad-manifest",
        "malformed-entry",
        "no-manifest",
    ],
)
def test_a_damaged_export_is_refused(tiny_codec, exported, damage, message):
    out, _ = exported
    damage(out)
    with pytest.raises(ExportError, match=message):
        OnnxCodecSteps(tiny_codec, export_dir=out)


def test_graphs_of_other_weights_are_refused(tiny_codec, exported):
    out, _ = exported
    other = AudioCodec(TINY).eval()
    other.load_state_dict(tiny_codec.state_dict())
    OnnxCodecSteps(other, export_dir=out)  # the same weights in another object: accepted
    with torch.no_grad():
        other.decoder.head.bias.add_(0.01)
    with pytest.raises(ExportError, match="other weights"):
        OnnxCodecSteps(other, export_dir=out)
    read_manifest(out, "codec")  # the folder itself is intact


def test_a_graph_onnxruntime_cannot_load_is_a_clear_error(tiny_codec, exported):
    """A file replaced along with its manifest entry passes the checksum; onnxruntime's refusal is one line."""
    out, _ = exported
    bad = out / "codec.decode.k2.f1.onnx"
    bad.write_bytes(b"not a graph at all")
    import hashlib

    _edit_manifest(
        out,
        lambda m: [
            g.update(sha256=hashlib.sha256(bad.read_bytes()).hexdigest()) for g in m["graphs"] if g["file"] == bad.name
        ],
    )
    steps = OnnxCodecSteps(tiny_codec, export_dir=out)
    with pytest.raises(ExportError, match="cannot load this graph"):
        steps.step("decode", torch.zeros(1, 2, 1, dtype=torch.long), tiny_codec.init_state(1, 2))


def test_provider_order_keeps_what_is_available(monkeypatch, caplog):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert select_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]  # TensorRT absent: skipped
    assert select_providers("cpu,cuda") == ["CPUExecutionProvider", "CUDAExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert select_providers() == ["CPUExecutionProvider"]
    with caplog.at_level(logging.WARNING):
        assert select_providers(["tensorrt"]) == ["CPUExecutionProvider"]
    assert "TensorrtExecutionProvider not available" in caplog.text
    with pytest.raises(ProviderError, match="not available"):
        select_providers(["cuda"], strict=True)
    with pytest.raises(ProviderError, match="unknown execution provider 'cdua'"):
        select_providers("cdua")


def test_a_provider_that_fails_to_start_falls_back_to_the_next(tiny_codec, exported, monkeypatch, caplog):
    out, _ = exported
    real, tried = ort.InferenceSession, []

    def fake(src, opts, providers, provider_options):
        tried.append(providers[0])
        if providers[0] != "CPUExecutionProvider":
            raise RuntimeError(f"{providers[0]}: driver version is insufficient")
        return real(src, opts, providers=providers, provider_options=provider_options)

    monkeypatch.setattr(ort, "InferenceSession", fake)
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    with caplog.at_level(logging.WARNING):
        sess = open_session(out / "codec.encode.k2.f1.onnx", gpu, name="enc")
    assert tried == gpu and sess.get_providers() == ["CPUExecutionProvider"]
    assert "enc: could not start on TensorrtExecutionProvider" in caplog.text
    assert (
        "falling back to CUDAExecutionProvider" in caplog.text and "falling back to CPUExecutionProvider" in caplog.text
    )


def test_session_options_for_real_time():
    opts = session_options(threads=2)
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert prov.DEFAULT_ORDER[0] == "TensorrtExecutionProvider"


def test_cli_export_then_encode_decode_on_onnx(tiny_codec, tmp_path, capsys):
    weights = save_checkpoint(tiny_codec, TINY.to_dict(), tmp_path / "w", "audio_codec")
    out = tmp_path / "graphs"
    args = ["export", "codec", "--out", str(out), "--weights", str(weights), "--codebooks", "2"]
    assert main(args + ["--frames-per-step", "1", "--ops", "encode", "decode"]) == 0
    assert "2 graphs (opset 17, checked)" in capsys.readouterr().out
    sf.write(tmp_path / "in.wav", speechlike(0.5), 24_000)
    onnx_args = ["--weights", str(weights), "--backend", "onnx", "--onnx-dir", str(out)]
    assert main(["encode", str(tmp_path / "in.wav"), str(tmp_path / "t.tsk"), "--codebooks", "2", *onnx_args]) == 0
    assert main(["decode", str(tmp_path / "t.tsk"), str(tmp_path / "o.wav"), *onnx_args]) == 0
    assert main(["decode", str(tmp_path / "t.tsk"), str(tmp_path / "ref.wav"), "--weights", str(weights)]) == 0
    got, ref = sf.read(tmp_path / "o.wav")[0], sf.read(tmp_path / "ref.wav")[0]
    assert got.shape == ref.shape and abs(got - ref).max() < 1e-3  # 16-bit WAV: a step or two at most
    capsys.readouterr()
    (out / "codec.encode.k2.f1.onnx").write_bytes(b"x")
    assert main(["encode", str(tmp_path / "in.wav"), str(tmp_path / "u.tsk"), "--codebooks", "2", *onnx_args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("talkstream: error:") and "checksum mismatch" in err and "\n" not in err


def test_server_engine_runs_graphs_from_the_folder(tiny_codec, exported, caplog):
    """What `talkstream serve --onnx-dir` does: the batched engine on exported graphs, equal to torch."""
    import asyncio

    from talkstream.streaming.codec_engine import CodecEngine

    out, _ = exported
    codes = torch.randint(0, TINY.codebook_size, (3, 2, 6))

    async def run(backend, **opts):
        engine = CodecEngine(tiny_codec, backend=backend, onnx_options=opts or None)
        engine.start()

        async def one(c):
            state, pcm = tiny_codec.init_state(1, 2), []
            for i in range(6):
                p, state = await engine.decode(c[None, :, i : i + 1], state)
                pcm.append(p)
            return torch.cat(pcm, -1)

        res = await asyncio.gather(*(one(c) for c in codes))
        await engine.stop()
        return engine, res

    with caplog.at_level(logging.INFO):
        engine, got = asyncio.run(run("onnx", export_dir=str(out), precision="fp32"))
    assert engine.onnx.export_dir == str(out) and "in memory" not in caplog.text  # every graph came from the folder
    _, ref = asyncio.run(run("torch"))
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_sliding_window_decoder_runs_on_the_onnx_codec(tiny_codec):
    """The sliding-window decode block needs no graph of its own: it is `decode` from a zero state, any length."""
    from talkstream.streaming.sliding_window import SlidingWindowDecoder

    codes = torch.randint(0, TINY.codebook_size, (1, 2, 23))
    outs = []
    for codec in (tiny_codec, OnnxAudioCodec(tiny_codec)):
        dec = SlidingWindowDecoder(codec, block_frames=4, lookback_frames=5)
        state, pcm = dec.init_state(2), []
        for i in range(0, 23, 3):
            p, state = dec.step(codes[..., i : i + 3], state)
            pcm.append(p)
        outs.append(torch.cat(pcm, -1))
    assert outs[0].shape[-1] == 20 * TINY.hop
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=0)
