"""Which libespeak-ng the process loads (the espeakng-loader wheel's; the system's only as a fallback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

espeakng_loader = pytest.importorskip("espeakng_loader")

_PROBE = """
import json, sys
{prelude}
from talkstream.models.phonemes import library_path, phonemize
u = phonemize("the blue bicycle")
maps = [line.split()[-1] for line in open("/proc/self/maps") if "espeak" in line and "/" in line]
print(json.dumps({{"path": library_path(), "maps": sorted(set(maps)), "phonemes": u.phonemes}}))
"""


def _probe(prelude: str = "") -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(prelude=prelude)], capture_output=True, text=True,
                         timeout=60, check=True)
    return json.loads(out.stdout.splitlines()[-1])


# The Talker's phoneme vocabulary (espeak-ng 1.51 names, no stress marks): what both libraries must give.
_BLUE_BICYCLE = ["D", "@2", "b", "l", "u:", "b", "aI", "s", "I", "k", "@L", "_:", "_"]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps (Linux)")
def test_the_wheels_library_is_loaded_and_phonemizes():
    got = _probe()
    wheel = str(Path(espeakng_loader.get_library_path()).resolve())
    assert str(Path(got["path"]).resolve()) == wheel
    assert [str(Path(m).resolve()) for m in got["maps"]] == [wheel]  # the system's library is not loaded at all
    assert got["phonemes"] == _BLUE_BICYCLE


@pytest.mark.skipif(not Path("/usr/lib/x86_64-linux-gnu/libespeak-ng.so.1").exists()
                    or not Path("/proc/self/maps").exists(), reason="no system libespeak-ng.so.1 to fall back to")
def test_without_the_wheel_the_system_library_is_the_fallback():
    got = _probe("sys.modules['espeakng_loader'] = None  # as if the wheel were not installed")
    assert "espeakng_loader" not in got["path"] and got["maps"] and "espeakng_loader" not in got["maps"][0]
    assert got["phonemes"] == _BLUE_BICYCLE
