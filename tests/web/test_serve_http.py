"""`talkstream serve` as users start it: the HTTP side comes up beside the WebSocket server, flags reach it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from talkstream.cli import main


@pytest.mark.slow
def test_serve_starts_the_page_beside_the_websocket_server():
    cmd = [sys.executable, "-m", "talkstream.cli", "serve", "--port", "0", "--http-port", "0"]
    cmd += ["--ice-server", "stun:stun.example.org:3478"]  # configured, handed to the page, never contacted here
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines, end = [], time.monotonic() + 120
        while time.monotonic() < end and not any("web page" in line for line in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        out = "".join(lines)
        ws_port = int(re.search(r"ws://127\.0\.0\.1:(\d+)", out).group(1))
        http_url = re.search(r"web page and WebRTC: (http://\S+)/", out).group(1)
        assert urllib.request.urlopen(f"{http_url}/healthz").read() == b"ok\n"
        config = json.loads(urllib.request.urlopen(f"{http_url}/config").read())
        assert config["ws_port"] == ws_port and config["num_codebooks"] == 8
        assert config["ice_servers"] == [{"urls": "stun:stun.example.org:3478"}]
        # One metrics endpoint, on the WebSocket port; the page's app has none.
        assert b"talkstream_sessions_active" in urllib.request.urlopen(f"http://127.0.0.1:{ws_port}/metrics").read()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{http_url}/metrics")
        assert refused.value.code == 404 and json.loads(refused.value.read())["code"] == "not_found"
    finally:
        proc.terminate()
        proc.wait(20)


def test_serve_refuses_a_bad_ice_server_in_one_line(capsys):
    assert main(["serve", "--port", "0", "--ice-server", "http://example.org"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("talkstream: error: --ice-server") and "\n" not in err
