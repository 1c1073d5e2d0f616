"""`talkstream bench backends` end to end on a tiny codec: every backend and step measured, JSON-ready results."""

from __future__ import annotations

import json

import pytest

from talkstream.bench import backends


@pytest.mark.slow
def test_bench_backends_reports_every_backend(tiny_codec, speech_wav, monkeypatch, capsys):
    monkeypatch.setattr(backends, "LADDER", (1, 2, 4))
    r = backends.run_backends_bench(tiny_codec, [speech_wav], steps=10, codebooks=4, frames_per_step=(2,))
    json.dumps(r)  # the CLI writes it as JSON
    assert {(x["backend"], x["step"]) for x in r["rows"]} == {
        (b, s) for b in backends.BACKENDS for s in ("codec encode", "codec decode", "talker step")
    }
    for row in r["rows"]:
        assert row["step_ms_mean"] > 0 and row["step_ms_p95"] > 0 and 0 < row["cpu_ms_mean"]
        assert abs(row["rtf"] - row["cpu_ms_mean"] / row["audio_ms"]) < 1e-9
        if row["backend"] == "torch":
            assert row["speedup_vs_torch"] == 1.0
    for b in backends.BACKENDS:
        cap = r["streams_per_core"][b]["2"]
        assert cap["streams"] in (0, 1, 2, 3, 4) and cap["chunk_ms"] == 2 * 1000 * 320 / 24_000
        if cap["streams"]:
            assert cap["step_cpu_ms_mean_at_max"] <= cap["chunk_ms"]
    q = r["quality"]
    assert q["torch"]["codes_equal_to_torch"] == 1.0 and q["torch"]["pesq_delta"] == 0.0
    assert q["torch"]["wer"] is None and "original audio" not in q  # no texts for a fixture file
    assert 0.0 <= q["onnx int8"]["codes_equal_to_torch"] <= 1.0 and q["onnx fp32"]["codes_equal_to_torch"] > 0.9
    assert {t["backend"] for t in r["talker_step"]} == set(backends.BACKENDS)
    assert r["providers"][-1] == "CPUExecutionProvider"
    assert "streams@2" in capsys.readouterr().out


def test_streams_per_core_finds_the_batch_that_just_keeps_up(tiny_codec):
    """A fake step costing 1 ms of CPU per stream: 2 frames (26.7 ms of audio) hold 26 streams, found to ~6%."""
    import time

    class OneMsPerStream:
        def step(self, op, x, state):
            t0 = time.thread_time()
            while time.thread_time() - t0 < 1e-3 * x.shape[0]:
                pass
            return None, None, state

    cap = backends.streams_per_core(tiny_codec, OneMsPerStream(), 4, frames=2, n_steps=3)
    assert 24 <= cap["streams"] <= 26
    assert cap["step_cpu_ms_mean_at_max"] <= cap["chunk_ms"] and cap["single_stream_step_cpu_ms"] >= 1.0


def test_manifest_texts_for_wer(tmp_path):
    (tmp_path / "eval").mkdir()
    rows = [{"file": "eval/a.wav", "split": "eval", "text": "one two"}, {"file": "eval/b.wav", "split": "eval"}]
    (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert backends.manifest_texts([tmp_path / "eval" / "a.wav"]) == ["one two"]
    assert backends.manifest_texts([tmp_path / "eval" / "b.wav"]) is None  # no text: no WER rather than a wrong one
    assert backends.manifest_texts([tmp_path / "elsewhere.wav"]) is None
