"""`talkstream serve --ray` fails loudly and leaves nothing behind, on a one-node local Ray cluster on 127.0.0.1 with
one CPU: replicas that cannot be placed are a one-line error naming what is missing, within seconds, not a wait for
ever; SIGTERM while the replicas deploy or while they serve takes the application down (Serve's proxy, and with it
the port, too)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

ray = pytest.importorskip("ray", reason="ray[serve] is not installed: pip install 'talkstream[ray]'")
serve = pytest.importorskip("ray.serve", reason="ray[serve] is not installed: pip install 'talkstream[ray]'")

pytestmark = pytest.mark.slow  # a Ray cluster and replicas warming up: docs/tests.md


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING")
    address = ray.get_runtime_context().gcs_address
    try:
        yield address
    finally:
        serve.shutdown()
        ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class Serve:
    """`talkstream serve --ray` in a process of its own, its output lines kept with the time each came."""

    def __init__(self, address: str, *args: str):
        self.port = _free_port()
        cmd = [sys.executable, "-m", "talkstream.cli", "serve", "--ray", address, "--port", str(self.port),
               "--thinker", "echo", "--no-http", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip()))

    def wait_for(self, text: str, timeout: float) -> float:
        """When the first line holding `text` came."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for t, line in list(self.lines):
                if text in line:
                    return t
            assert self.proc.poll() is None, "serve --ray ended early:\n" + self.output()
            time.sleep(0.2)
        raise AssertionError(f"no {text!r} within {timeout:.0f} s:\n" + self.output())

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)


def _apps() -> dict:
    try:
        return serve.status().applications
    except ray.exceptions.RayActorError:  # Serve's controller is gone (serve --ray stopped Serve), every app with it
        return {}


def test_replicas_that_cannot_be_placed_are_an_error_naming_what_is_missing(cluster):
    s = Serve(cluster, "--workers", "2")  # two replicas of one CPU each on a one-CPU cluster
    try:
        deploying = s.wait_for("deploying 2 replicas", 120)
        noticed = s.wait_for("taking down", 60)
        assert s.proc.wait(60) == 2, s.output()
    finally:
        s.proc.kill()
    errors = [line for _, line in s.lines if line.startswith("talkstream: error:")]
    assert len(errors) == 1 and "Traceback" not in s.output(), s.output()
    assert "1 of 2 replicas cannot be placed" in errors[0] and "missing 1 CPU" in errors[0], errors[0]
    assert noticed - deploying < 30, f"the error took {noticed - deploying:.0f} s"
    print(f"cannot be placed: noticed {noticed - deploying:.1f} s after deploying; {errors[0]}")
    assert "talkstream" not in _apps() and not _listening(s.port)


@pytest.mark.parametrize("when", ["deploying", "serving"])
def test_sigterm_takes_down_what_was_deployed(cluster, when):
    s = Serve(cluster, "--workers", "1")
    try:
        if when == "deploying":  # inside the deploy: the application exists, its replica is still warming up
            s.wait_for("deploying 1 replicas", 120)
            end = time.monotonic() + 60
            while "talkstream" not in _apps():
                assert time.monotonic() < end, s.output()
                time.sleep(0.2)
            assert not any("talkstream serving" in line for _, line in s.lines)
        else:
            s.wait_for("talkstream serving ws://", 240)
            assert _listening(s.port)
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(60) == 0, s.output()
    finally:
        s.proc.kill()
    assert "talkstream" not in _apps() and not _listening(s.port), s.output()
