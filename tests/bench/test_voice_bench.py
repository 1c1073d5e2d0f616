"""`talkstream bench voices`: the Talker's candidate voices judged by the listener, side by side."""

import json

import pytest

from talkstream.cli import main


def test_bad_voice_names_are_refused_in_one_line_before_any_synthesis(capsys):
    assert main(["bench", "voices", "--voices", "piper:joe", "joe"]) == 2
    err = capsys.readouterr().err
    assert "ENGINE:NAME" in err and err.count("\n") == 1


@pytest.mark.slow
def test_a_voice_is_measured_by_the_recogniser_and_dnsmos(tmp_path, capsys):
    pytest.importorskip("faster_whisper", reason="the recogniser is in the asr extra")
    pytest.importorskip("piper", reason="piper-tts is in the data and test extras")
    out = tmp_path / "voices.json"
    assert main(["bench", "voices", "--voices", "piper:joe", "--sentences", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["voice"] for r in rows] == ["piper:joe"]
    assert 0 <= rows[0]["wer"] < 0.5  # a natural voice is mostly understood
    assert rows[0]["dnsmos_ovrl"] > 2.5  # a clean natural voice (joe measures about 3.2; espeak-ng about 2.7)
    assert "piper:joe" in capsys.readouterr().out
