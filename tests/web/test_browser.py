"""The page in a real browser: Debian's Chromium driven by Playwright, with a fake microphone playing a WAV file.

The page is served by the server under test (the same process, its own thread); it connects over WebRTC or over
WebSocket, and the test reads what the page measured from `window.talkstreamStats`. A screenshot of each run goes
to tests/artifacts/ (not tracked).
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from talkstream.audio_io import load_audio
from talkstream.data import SAMPLE_WAV
from talkstream.services.app import ServerConfig
from talkstream.services.session import Limits

pytestmark = pytest.mark.slow  # docs/tests.md: the fast tier is -m 'not slow'

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install -e '.[test]')")
if shutil.which(CHROMIUM) is None:
    pytest.skip(f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(start_server):
    st = start_server(ServerConfig(port=0, http_port=0, max_sessions=4))
    yield st
    st.stop()


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright, tmp_path_factory):
    wav = tmp_path_factory.mktemp("mic") / "speech48k.wav"
    sf.write(wav, load_audio(SAMPLE_WAV, 48_000), 48_000, subtype="PCM_16")  # Chromium loops it as the mic
    yield from _chromium(playwright, wav)


@pytest.fixture(scope="module")
def chat_browser(playwright, tmp_path_factory):
    """A microphone that speaks one turn, then is quiet long enough for the answer (the loop restarts after)."""
    wav = tmp_path_factory.mktemp("mic") / "turn48k.wav"
    speech = load_audio(SAMPLE_WAV, 48_000)
    sf.write(wav, np.concatenate([speech, np.zeros(6 * 48_000, np.float32)]), 48_000, subtype="PCM_16")
    yield from _chromium(playwright, wav)


def _chromium(p, wav):
    b = p.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=[
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}",
            "--autoplay-policy=no-user-gesture-required",
        ],
    )
    yield b
    b.close()


def wait_sessions(server, n: int, timeout: float) -> int:
    end = time.monotonic() + timeout
    while len(server.srv.sessions) != n and time.monotonic() < end:
        time.sleep(0.2)
    return len(server.srv.sessions)


@pytest.mark.parametrize("transport", ["webrtc", "ws"])
def test_page_round_trip_in_chromium(server, browser, transport):
    page = browser.new_page()
    console_errors: list[str] = []
    page.on("pageerror", lambda e: console_errors.append(str(e)))
    try:
        page.goto(f"{server.http_url}/")
        assert page.title() == "talkstream"
        page.select_option("#transport", transport)
        page.select_option("#mode", "codec")
        page.select_option("#codebooks", "4")
        page.click("#connect")
        page.wait_for_function(
            "() => window.talkstreamStats.receivedSeconds > 2 && window.talkstreamStats.latencyEvents >= 2",
            timeout=30_000,
        )
        stats = page.evaluate("() => window.talkstreamStats")
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"page-{transport}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        assert stats["state"] == "connected" and stats["transport"] == transport
        assert stats["receivedLevel"] > 0.01, stats  # the codec's echo of the speech, not silence
        assert 0 < stats["lastLatencyMs"] < 3000, stats  # shown and bounded; the bench measures it
        assert not stats["errors"] and not console_errors, (stats["errors"], console_errors)
        ready = [e for e in stats["events"] if e["type"] == "stats"]
        assert ready and ready[-1]["frames_in"] > 50 and ready[-1]["frames_out"] > 0
        if transport == "webrtc":
            latency = [e for e in stats["events"] if e["type"] == "latency"]
            assert latency and latency[-1]["server_ms_p50"] > 0
        assert len(server.srv.sessions) == 1
        assert "4 codebooks" in page.inner_text("#codebooks option:checked")
        page.click("#connect")  # disconnect
        page.wait_for_function("() => window.talkstreamStats.state === 'closed'", timeout=5_000)
        assert wait_sessions(server, 0, 10) == 0
        # Connect again, then close the tab without disconnecting: the server frees the session.
        page.click("#connect")
        page.wait_for_function("() => window.talkstreamStats.receivedSeconds > 0.5", timeout=30_000)
        assert len(server.srv.sessions) == 1
    finally:
        page.close()
    t0 = time.monotonic()
    assert wait_sessions(server, 0, 40) == 0
    print(f"tab closed: session freed after {time.monotonic() - t0:.1f} s")


def test_page_camera_comes_back_through_the_video_codec(server, browser):
    """Chromium's fake camera (a test pattern) with the camera box ticked: the page shows the codec's
    reconstruction, at the codec's 128x128, and the audio echo goes on beside it."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{server.http_url}/")
        assert not page.is_visible("#codec-video")  # no camera, no video pane
        page.select_option("#transport", "webrtc")
        page.select_option("#mode", "codec")
        page.check("#camera")
        page.click("#connect")
        page.wait_for_function(
            "() => window.talkstreamStats.videoFramesReceived > 25 && window.talkstreamStats.receivedSeconds > 0.5",
            timeout=30_000,
        )
        stats = page.evaluate("() => window.talkstreamStats")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "page-camera.png"), full_page=True)
        assert stats["camera"] and stats["videoFramesSent"] > 25 and stats["videoSize"] == "128x128", stats
        assert page.is_visible("#local-video") and page.is_visible("#codec-video")
        assert not stats["errors"] and not errors, (stats["errors"], errors)
        page.click("#connect")  # disconnect: the camera stops and the pane goes
        page.wait_for_function("() => window.talkstreamStats.state === 'closed'", timeout=5_000)
        assert not page.is_visible("#codec-video")
    finally:
        page.close()
    assert wait_sessions(server, 0, 15) == 0


def test_page_chat_over_webrtc_answers_turns(server, chat_browser):
    page = chat_browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{server.http_url}/")
        page.select_option("#transport", "webrtc")
        page.select_option("#mode", "chat")
        page.click("#connect")
        # The microphone speaks one turn, then 6 s of quiet: the shipped Thinker-Talker answers it.
        page.wait_for_function(
            """() => window.talkstreamStats.events.some(e => e.type === "reply" && e.state === "end")
                     && window.talkstreamStats.events.some(e => e.type === "transcript")
                     && window.talkstreamStats.receivedSeconds > 0.3""",
            timeout=150_000,
        )
        stats = page.evaluate("() => window.talkstreamStats")
        assert not stats["errors"] and not errors, (stats["errors"], errors)
        heard = next(e["text"] for e in stats["events"] if e["type"] == "transcript")
        said = [e["text"] for e in stats["events"] if e["type"] == "reply_text" and e["final"]]
        first = next(e["first_packet_ms"] for e in stats["events"] if e["type"] == "latency" and "first_packet_ms" in e)
        text = page.inner_text("#transcript")
        assert "end of turn" in text and "reply" in text
        assert f"you: {heard}" in text
        assert said and all(f"talkstream: {t}" in text for t in said)
        # The page rounds with Math.round (half up); Python's round() rounds half to even.
        assert f"first audio {math.floor(first + 0.5)} ms" in page.inner_text("#log")
        # The headline is the reply's latency (end of turn to first audio), labelled, not the turn's round trip.
        shown = page.evaluate("() => window.talkstreamStats")
        latencies = [e["first_packet_ms"] for e in shown["events"] if e["type"] == "latency" and "first_packet_ms" in e]
        assert shown["latencyKind"] == "reply" and shown["lastLatencyMs"] == latencies[-1]
        assert page.inner_text("#latency") == f"{math.floor(latencies[-1] + 0.5)} ms"
        assert page.inner_text("#latency-label").startswith("Reply latency (end of your turn to its first audio)")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "page-chat.png"), full_page=True)
    finally:
        page.close()
    assert wait_sessions(server, 0, 15) == 0


def test_page_state_follows_the_server_and_a_wrong_token_can_be_retyped(start_server, browser):
    """A server with a token: a wrong one is refused and the field asks again; the right one connects; a long
    event wraps in the log instead of widening the page; when the server stops, the page says so."""
    st = start_server(ServerConfig(port=0, http_port=0, thinker="echo", backend="torch", limits=Limits(token="s3cret")))
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    running = True
    try:
        page.goto(f"{st.http_url}/")
        page.wait_for_selector("#token", state="visible", timeout=10_000)  # shown once the page has read /config
        assert page.inner_text("#hint") == "Press Connect and speak."
        page.select_option("#transport", "webrtc")
        page.fill("#token", "wrong")
        page.click("#connect")
        page.wait_for_function("() => window.talkstreamStats.state === 'failed'", timeout=15_000)
        assert "unauthorized" in page.inner_text("#state") and page.input_value("#token") == ""
        assert page.inner_text("#hint").startswith("Enter the server's token")
        page.fill("#token", "s3cret")
        page.click("#connect")
        page.wait_for_function("() => window.talkstreamStats.receivedSeconds > 0.5", timeout=30_000)
        assert page.evaluate("() => window.talkstreamStats.state") == "connected"
        assert page.inner_text("#hint").startswith("Speak")
        page.evaluate("() => log('ready ' + 'x'.repeat(4000))")  # one very long event line
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 1000
        assert page.evaluate("() => document.getElementById('transcript').clientWidth") > 300
        st.stop()
        running = False
        page.wait_for_function("() => ['closed', 'failed'].includes(window.talkstreamStats.state)", timeout=20_000)
        shown = page.evaluate("() => window.talkstreamStats")
        assert shown["stateReason"] and page.inner_text("#connect") == "Connect", shown["stateReason"]
        print(f"after the server stopped: {shown['state']}: {shown['stateReason']}")
    finally:
        page.close()
        if running:
            st.stop()
