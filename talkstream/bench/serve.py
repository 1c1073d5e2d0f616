"""`talkstream bench serve`: N concurrent real-time codec sessions against a real server on loopback.

The server runs as its own process (`talkstream serve`), so its CPU time and memory are measured apart from the
clients'; the clients run in this process, each streaming speech in 20 ms frames at real time for a fixed time.
Latency per returned frame is measured with the client's own clock (the server echoes each input frame's
timestamp). A frame is late when its latency exceeds the algorithmic latency plus one codec frame (40 ms): the
budget the issue sets. Note that on a 2-core machine the clients compete with the server for the CPU; each row
also says how much CPU everything else on the machine used meanwhile (`other_cpu_cores`).

`--workers 1 2` measures servers of one and two worker processes (`serve --workers N`) side by side in one run:
the sessions each holds within budget, and their ratio.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from talkstream.audio_io import load_audio
from talkstream.client import stream_audio
from talkstream.data import SAMPLE_WAV
from talkstream.errors import UserError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # a worker gone since it was listed
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_mb(pid: int) -> float:
    with contextlib.suppress(FileNotFoundError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _machine_busy_s() -> float:
    """CPU seconds every process on the machine has used (all cores): the load beside ours comes out of it."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """`talkstream serve --workers N` in its own process; its output in a file, never a pipe. HTTP (the page and
    WebRTC signaling, `http_url` once ready) only when asked for."""

    def __init__(self, workers: int, max_sessions: int, options: list[str], http: bool = False,
                 precision: str = "int8", thinker: str = "echo", step_interval_ms: float | None = None):
        self.workers, self.precision, self.step_interval_ms = workers, precision, step_interval_ms
        self.port = _free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.http = http
        self.http_url: str | None = None
        cmd = [sys.executable, "-m", "talkstream.cli", "serve", "--port", str(self.port)]
        cmd += ["--http-port", "0"] if http else ["--no-http"]
        cmd += ["--workers", str(workers), "--max-sessions", str(max_sessions), "--thinker", thinker, *options]
        cmd += ["--precision", precision]
        cmd += [] if step_interval_ms is None else ["--step-interval-ms", str(step_interval_ms)]  # None: the default
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def wait_ready(self, timeout: float = 600.0) -> None:
        """Until every worker is warm: the server prints its address only then."""
        end = time.monotonic() + timeout
        ready = "web page and WebRTC" if self.http else "talkstream serving"  # the HTTP line comes second
        while ready not in self.output():
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"the {self.workers}-worker server did not start: {self.output()[-500:]}")
            time.sleep(0.3)
        found = re.search(r"web page and WebRTC: (http://\S+)/", self.output())
        self.http_url = found.group(1) if found else None

    def pids(self) -> list[int]:
        """The server's processes: the supervisor and its workers (one process when --workers 1)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [self.proc.pid, *map(int, children)]

    def cpu_s(self) -> float:
        return sum(_proc_cpu_s(p) for p in self.pids())

    def rss_mb(self) -> float:
        return sum(_proc_rss_mb(p) for p in self.pids())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def _run_level(server: ServerProcess, audio: np.ndarray, sessions: int, seconds: float, budget_ms: float) -> dict:
    clip = np.tile(audio, int(np.ceil(seconds * 24_000 / audio.size)))[: int(seconds * 24_000)]
    cpu0, busy0, t0, own0 = server.cpu_s(), _machine_busy_s(), time.monotonic(), time.process_time()

    async def one(i: int):
        await asyncio.sleep(0.02 * i / max(sessions, 1))  # spread the 20 ms phases like independent callers
        return await stream_audio(server.url, clip, 24_000, mode="codec", codebooks=8, output=("pcm",), tail_s=0.3)

    results = await asyncio.gather(*(one(i) for i in range(sessions)), return_exceptions=True)
    wall, cpu, own = time.monotonic() - t0, server.cpu_s() - cpu0, time.process_time() - own0
    other = max(0.0, _machine_busy_s() - busy0 - cpu - own)
    ok = [r for r in results if not isinstance(r, BaseException)]
    lat = np.concatenate([np.asarray(r.latencies_ms, float) for r in ok]) if ok else np.zeros(1)
    first = [r.first_audio_ms for r in ok if r.first_audio_ms is not None]
    drops = sum((r.summary or {}).get("drops", 0) for r in ok)
    per_worker = Counter(str(r.ready.get("worker")) for r in ok)
    return {
        "workers": server.workers,
        "precision": server.precision,
        "step_interval_ms": server.step_interval_ms,
        "sessions": sessions,
        "failed_sessions": len(results) - len(ok),
        "sessions_per_worker": sorted(per_worker.values(), reverse=True),
        "frames": int(lat.size),
        "latency_ms_p50": float(np.percentile(lat, 50)),
        "latency_ms_p95": float(np.percentile(lat, 95)),
        "latency_ms_p99": float(np.percentile(lat, 99)),
        "late_frames": int((lat > budget_ms).sum()),
        "late_share": float((lat > budget_ms).mean()),
        "drops": int(drops),
        "first_audio_ms_max": float(max(first)) if first else None,
        "server_cpu_cores": cpu / wall,
        # what one session costs the server: 1000 / this is how many sessions a core could carry at this load
        "server_cpu_ms_per_session_s": 1000 * cpu / wall / max(sessions, 1),
        "client_cpu_cores": own / wall,  # the clients share this machine: near 1.0 means they are the bottleneck
        "other_cpu_cores": other / wall,  # everything else on the machine meanwhile (another job's training run)
        "server_rss_mb": server.rss_mb(),
        "passes": bool(len(ok) == sessions and np.percentile(lat, 95) <= budget_ms and drops == 0),
    }


def _held(rows: list[dict]) -> dict:
    """The most sessions held within budget, and per server core."""
    passing = [r for r in rows if r["passes"]]
    best = max(passing, key=lambda r: r["sessions"]) if passing else None
    return {
        "max_sessions_passing": best["sessions"] if best else 0,
        "sessions_per_server_core": (best["sessions"] / max(best["server_cpu_cores"], 1e-9)) if best else 0.0,
    }


def run_serve_bench(
    levels: list[int],
    seconds: float,
    weights: str | None = None,
    frames_per_step: int = 2,
    gather_ms: float = 0.0,
    backend: str = "onnx",
    workers: list[int] | None = None,
    precisions: list[str] | None = None,
    step_intervals: list[float] | None = None,
) -> dict:
    """Every server (each worker count at each codec precision, fp32 or int8 graphs, and each `--step-interval-ms`)
    runs at once (idle while another is measured) and each level is run on each in turn, so a change in the
    machine's other load during the run falls on all of them alike."""
    from talkstream.checkpoint import load_audio_codec
    from talkstream.services.app import ServerConfig

    workers, precisions = workers or [1], precisions or ["int8"]
    intervals = step_intervals or [ServerConfig.step_interval_ms]
    if any(i < 0 for i in intervals):
        raise UserError(f"--step-interval-ms must be at least 0 (got {intervals})")
    if set(precisions) - {"fp32", "int8"}:
        raise UserError(f"--precision must be fp32 or int8 (got {precisions})")
    if any(w < 1 for w in workers):
        raise UserError(f"--workers must be at least 1 (got {workers})")
    if any(n < 1 for n in levels):
        raise UserError(f"--sessions must be at least 1 (got {levels})")
    codec = load_audio_codec(weights)
    budget_ms = codec.algorithmic_latency_ms + 1000 / codec.frame_rate  # one frame beyond the algorithmic latency
    options = ["--frames-per-step", str(frames_per_step), "--gather-ms", str(gather_ms), "--backend", backend]
    options += ["--weights", weights] if weights else []
    audio = load_audio(SAMPLE_WAV, 24_000)
    servers: list[ServerProcess] = []
    rows: list[dict] = []
    try:
        variants = [(w, p, i) for w in workers for p in precisions for i in intervals]
        for w, precision, interval in variants:  # one at a time: warm-ups side by side would only slow each other
            print(f"starting a server with {w} worker(s), {precision} graphs, step interval {interval:g} ms ...",
                  flush=True)
            servers.append(ServerProcess(w, max(levels) + 4, options, precision=precision, step_interval_ms=interval))
            servers[-1].wait_ready()
        for n in levels:
            for server in servers:
                print(f"{n} sessions for {seconds:.0f} s on {server.workers} worker(s), {server.precision}, "
                      f"step interval {server.step_interval_ms:g} ms ...", flush=True)
                rows.append(asyncio.run(_run_level(server, audio, n, seconds, budget_ms)))
    finally:
        for server in servers:
            server.stop()
    by_workers = [
        {"workers": w, "precision": p, "step_interval_ms": i,
         **_held([r for r in rows if (r["workers"], r["precision"], r["step_interval_ms"]) == (w, p, i)])}
        for w, p, i in variants
    ]
    result = {
        "budget_ms": budget_ms,
        "seconds": seconds,
        "frames_per_step": frames_per_step,
        "gather_ms": gather_ms,
        "backend": backend,
        "precisions": precisions,
        "step_intervals_ms": intervals,
        "cpu_count": os.cpu_count(),
        "workers": workers,
        "rows": rows,
        "by_workers": by_workers,
        **by_workers[0],  # the first worker count's figures, where earlier results kept them
    }
    # Several worker counts or several precisions (one of them, one interval): the last server's sessions held over
    # the first's.
    ratio = (None if len(intervals) > 1 else "scaling_ratio" if len(precisions) == 1
             else "precision_ratio" if len(workers) == 1 else None)
    if ratio and len(by_workers) > 1 and by_workers[0]["max_sessions_passing"]:
        result[ratio] = by_workers[-1]["max_sessions_passing"] / by_workers[0]["max_sessions_passing"]
    head = (
        f"{'workers':>7}{'graphs':>7}{'step ms':>8}{'sessions':>9}{'per worker':>12}{'p50 ms':>8}{'p95 ms':>8}"
        f"{'late':>7}{'drops':>7}"
        f"{'first ms':>9}{'srv cores':>10}{'ms/sess-s':>10}{'cli cores':>10}{'other':>7}{'RSS MB':>8}  ok"
    )
    print(head + "\n" + "-" * len(head))
    for r in rows:
        first = f"{r['first_audio_ms_max']:>9.1f}" if r["first_audio_ms_max"] is not None else f"{'-':>9}"
        spread = "/".join(map(str, r["sessions_per_worker"])) or "-"
        print(
            f"{r['workers']:>7}{r['precision']:>7}{r['step_interval_ms']:>8g}{r['sessions']:>9}{spread:>12}"
            f"{r['latency_ms_p50']:>8.1f}{r['latency_ms_p95']:>8.1f}"
            f"{r['late_frames']:>7}{r['drops']:>7}{first}{r['server_cpu_cores']:>10.2f}"
            f"{r['server_cpu_ms_per_session_s']:>10.1f}"
            f"{r['client_cpu_cores']:>10.2f}{r['other_cpu_cores']:>7.2f}{r['server_rss_mb']:>8.0f}"
            f"  {'yes' if r['passes'] else 'no'}"
        )
    print(f"budget: p95 <= {budget_ms:.1f} ms (algorithmic latency + one frame), no drops.")
    for b in by_workers:
        print(
            f"{b['workers']} worker(s), {b['precision']}, step interval {b['step_interval_ms']:g} ms: "
            f"{b['max_sessions_passing']} sessions held, "
            f"{b['sessions_per_server_core']:.1f} per server core"
        )
    if "scaling_ratio" in result:
        print(f"{workers[-1]} workers hold {result['scaling_ratio']:.2f}x the sessions of {workers[0]}")
    if "precision_ratio" in result:
        print(f"{precisions[-1]} graphs hold {result['precision_ratio']:.2f}x the sessions of {precisions[0]}")
    return result
