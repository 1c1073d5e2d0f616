"""PESQ/STOI on any length (scored in pieces), and a one-line error when the metrics extra is missing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from talkstream.bench.metrics import PESQ_PIECE_S, pieces


@pytest.mark.parametrize("n", [1, 15, 16, 17, 600 * 16_000 + 7])
def test_pieces_cover_everything_in_equal_parts_no_longer_than_the_cap(n):
    got = pieces(n, 16_000 if n > 100 else 1, PESQ_PIECE_S)
    sizes = [s.stop - s.start for s in got]
    assert got[0].start == 0 and got[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(got, got[1:], strict=False))
    assert max(sizes) <= PESQ_PIECE_S * (16_000 if n > 100 else 1) and max(sizes) - min(sizes) <= 1


def test_pesq_survives_a_minute_of_many_utterances():
    """One call on this crashed the process (pesq's C code past about 50 utterances); in pieces it scores."""
    pytest.importorskip("pesq")
    from talkstream.bench.metrics import pesq_wb

    sr = 16_000
    t = np.arange(100 * sr) / sr
    x = (np.sin(2 * np.pi * 0.7 * t) > 0) * (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))
                                             + 0.1 * np.random.default_rng(0).standard_normal(t.size))
    mild = x + 0.02 * np.random.default_rng(1).standard_normal(t.size)
    heavy = x + 0.3 * np.random.default_rng(2).standard_normal(t.size)
    clean, noisy = (pesq_wb(x.astype(np.float32), y.astype(np.float32), sr) for y in (mild, heavy))
    # The pieces' average still ranks the degradations: a score, not a constant or a crash.
    assert np.isfinite(clean) and np.isfinite(noisy) and clean > noisy + 0.5


def test_roundtrip_without_the_metrics_extra_says_how_to_install_it():
    code = ("import sys; sys.modules['pesq'] = None\n"
            "from talkstream.cli import main; sys.exit(main(['roundtrip']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "pip install -e '.[metrics]'" in p.stderr, p.stderr
