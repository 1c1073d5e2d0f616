"""`talkstream serve --workers N`: N worker processes behind one address, each a whole server with its own engine.

How a connection finds its worker: every worker listens on the same WebSocket and HTTP ports with SO_REUSEPORT, and
the kernel hashes each new TCP connection (its address 4-tuple) to one of the listeners. A WebSocket session is one
TCP connection, so it lives on the worker that accepted it for its whole life. WebRTC: `POST /offer` lands on one
worker, which creates the peer connection; the ICE candidates in its answer are UDP ports that worker's process
opened (aiortc), so the media and the data channel go straight to the worker that answered the offer and never
touch the others. The `ready` event names the worker (`worker`: its pid).

The supervisor (this module, in the process that ran `serve`) loads no model. It checks the ports and holds them
(port 0 becomes one concrete port that every worker shares), starts the workers (spawned: each a fresh interpreter,
no forked model or thread state), prints the address once all of them are warm, reports a worker that dies and
starts another in its place, and on SIGINT or SIGTERM stops every worker (each closes its sessions as a single
server does) and returns. A worker whose supervisor is gone stops by itself.

Metrics: the workers run prometheus-client's multiprocess mode in PROMETHEUS_MULTIPROC_DIR (a temporary folder
unless it is set; its *.db files are cleared at start), so /metrics on any worker sums every worker's counters,
histograms and live gauges. Per-worker limits: --max-sessions applies to each worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING

from talkstream.errors import UserError

if TYPE_CHECKING:
    from talkstream.services.app import ServerConfig

log = logging.getLogger(__name__)

STOP_GRACE_S = 20.0  # a worker closes its sessions in this long or is killed
MAX_RESTARTS = 5  # deaths within RESTART_WINDOW_S before the supervisor gives up
RESTART_WINDOW_S = 60.0


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (`docker run --cpus 2`: 2.0), or None when unlimited.

    A container limited this way still sees every core of the host in its affinity mask: one worker per visible core
    would start dozens of workers, each loading its own models, on a 2-CPU quota.
    """
    with contextlib.suppress(OSError, ValueError):
        quota, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000" or "200000 100000"
        return None if quota == "max" else int(quota) / int(period)
    with contextlib.suppress(OSError, ValueError):
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())  # cgroup v1: -1 when unlimited
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    return None


def cores() -> int:
    """The cores this process may use: its affinity mask, capped by its cgroup's CPU quota (rounded up)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(n, math.ceil(limit))) if limit else n


def default_workers() -> int:
    """One worker per core; 1 where the kernel does not spread SO_REUSEPORT connections (macOS and the BSDs hand
    them all to one listener)."""
    return cores() if sys.platform.startswith("linux") else 1


def reserve_port(host: str, port: int) -> socket.socket:
    """Check that nothing listens on (host, port), then hold it with SO_REUSEPORT (port 0: a free one) for the workers.

    The probe binds without SO_REUSEPORT, so another server on the port, even another `--workers` one, is refused
    here rather than silently joined.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise UserError("--workers above 1 needs SO_REUSEPORT (Linux, BSD, macOS); use --workers 1 here")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port:
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as e:
                raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e} (another server?)") from None
    held = socket.socket(family)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        held.bind((host, port))
    except OSError as e:
        held.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return held


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for the children started inside, and put the old values back."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _how(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


# -- the worker -------------------------------------------------------------------------------------------------
def _worker_main(config: ServerConfig, index: int, status: Connection, threads: int) -> None:
    """One worker: a whole TalkstreamServer on the shared ports until SIGINT/SIGTERM or its supervisor is gone."""
    import asyncio

    import torch

    torch.set_num_threads(threads)
    try:
        asyncio.run(_serve_worker(config, index, status))
    except Exception as e:  # start-up failed (a port, the weights): the supervisor prints it as the error
        user = isinstance(e, UserError)  # anything else is a bug: its traceback is printed here, in the worker
        log.log(logging.DEBUG if user else logging.ERROR, "worker %d failed", index, exc_info=True)
        with contextlib.suppress(OSError):
            status.send(("error", index, os.getpid(), str(e) or type(e).__name__, user))
        sys.exit(2)


async def _serve_worker(config: ServerConfig, index: int, status: Connection) -> None:
    import asyncio

    from talkstream.services.app import TalkstreamServer

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    def stop_once() -> None:
        # The first signal starts a clean stop; later ones (a Ctrl-C reaches the workers and the supervisor's SIGTERM
        # follows) are ignored. Otherwise one landing while asyncio.run closes the loop finds the loop's wakeup fd
        # already closed, and Python prints a traceback for it.
        stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_once)
    supervisor = os.getppid()
    server = TalkstreamServer(config)
    try:
        await server.start()
    except BaseException:
        with contextlib.suppress(Exception):  # what did start is let go; the start-up error is the one reported
            await server.stop()
        raise
    status.send(("ready", index, os.getpid(), None))
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if os.getppid() != supervisor:
                log.warning("worker %d: the supervisor is gone; stopping", index)
                break
    finally:
        await server.stop()


# -- the supervisor ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Worker:
    index: int
    process: mp.process.BaseProcess
    status: Connection
    ready: bool = False


class Supervisor:
    """Starts `workers` copies of the server on shared ports, watches them, and stops them all on a signal."""

    def __init__(self, config: ServerConfig, workers: int, threads: int | None = None):
        if workers < 1:
            raise UserError(f"--workers must be at least 1 (got {workers})")
        self.config = config
        self.n = workers
        self.threads = threads or max(1, cores() // workers)  # no worker oversubscribes the cores
        self.workers: dict[int, _Worker] = {}
        self.deaths: deque[float] = deque()
        self._ctx = mp.get_context("spawn")
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        self._metrics_dir: str | None = None
        self._own_metrics_dir = False

    # what the workers share
    def _prepare(self) -> tuple[ServerConfig, list[socket.socket]]:
        c = self.config
        held = [reserve_port(c.host, c.port)]
        port = held[0].getsockname()[1]
        http_port = c.http_port
        if http_port is not None:
            held.append(reserve_port(c.host, http_port))
            http_port = held[1].getsockname()[1]
        self._metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if self._metrics_dir:
            Path(self._metrics_dir).mkdir(parents=True, exist_ok=True)
            for f in Path(self._metrics_dir).glob("*.db"):  # the last run's values: prometheus-client wants them gone
                f.unlink()
        else:
            self._metrics_dir, self._own_metrics_dir = tempfile.mkdtemp(prefix="talkstream-metrics-"), True
        return dataclasses.replace(c, port=port, http_port=http_port, reuse_port=True), held

    def _start(self, config: ServerConfig, index: int) -> None:
        recv, send = self._ctx.Pipe(duplex=False)
        p = self._ctx.Process(
            target=_worker_main, args=(config, index, send, self.threads), name=f"talkstream-worker-{index}"
        )
        threads = str(self.threads)
        assert self._metrics_dir is not None
        with _environ(PROMETHEUS_MULTIPROC_DIR=self._metrics_dir, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads):
            p.start()
        send.close()  # the child holds its own copy: recv sees EOF when the child is gone
        self.workers[index] = _Worker(index, p, recv)

    def _on_signal(self, signum, frame) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _wait(self, timeout: float | None) -> list:
        objs: list = [self._wake_r]
        for w in self.workers.values():
            objs += [w.status, w.process.sentinel]
        return wait(objs, timeout)

    def _read_status(self, w: _Worker) -> tuple | None:
        try:
            return w.status.recv() if w.status.poll() else None
        except (EOFError, OSError):
            return None

    def _wait_ready(self) -> bool:
        """Until every worker is warm (True) or a signal came (False); a worker that fails raises its error."""
        while not all(w.ready for w in self.workers.values()):
            self._wait(None)
            if self._stopping:
                return False
            for w in self.workers.values():
                msg = self._read_status(w)
                if msg is not None and msg[0] == "ready":
                    w.ready = True
                elif msg is not None and msg[0] == "error":
                    raise (UserError if msg[4] else RuntimeError)(msg[3])
                elif not w.process.is_alive():
                    raise RuntimeError(
                        f"worker {w.index} (pid {w.process.pid}) stopped while the workers were starting "
                        f"({_how(w.process.exitcode)})"
                    )
        return True

    def _watch(self, config: ServerConfig) -> None:
        """Serve until a signal: report each worker that dies and start another in its place."""
        while not self._stopping:
            self._wait(None)
            for w in list(self.workers.values()):
                msg = self._read_status(w)
                if msg is not None and msg[0] == "ready":
                    w.ready = True
                    print(f"talkstream: worker {w.index} is back (pid {w.process.pid})", file=sys.stderr, flush=True)
                elif msg is not None and msg[0] == "error":
                    raise (UserError if msg[4] else RuntimeError)(f"worker {w.index} could not start again: {msg[3]}")
                if w.process.is_alive() or self._stopping:
                    continue
                time.sleep(0.2)  # a Ctrl-C reaches the workers too: let its signal land here before calling it a death
                if self._stopping:
                    break
                self._replace(config, w)

    def _replace(self, config: ServerConfig, w: _Worker) -> None:
        w.process.join()
        print(
            f"talkstream: worker {w.index} (pid {w.process.pid}) died ({_how(w.process.exitcode)}); its sessions "
            f"were cut; starting another",
            file=sys.stderr,
            flush=True,
        )
        self._forget(w)
        now = time.monotonic()
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > RESTART_WINDOW_S:
            self.deaths.popleft()
        if len(self.deaths) > MAX_RESTARTS:
            raise RuntimeError(f"{len(self.deaths)} workers died within {RESTART_WINDOW_S:.0f} s; stopping")
        self._start(config, w.index)

    def _forget(self, w: _Worker) -> None:
        from prometheus_client import multiprocess

        w.status.close()
        if self._metrics_dir and w.process.pid is not None:
            multiprocess.mark_process_dead(w.process.pid, self._metrics_dir)  # its live gauges leave the sums

    def _stop_all(self) -> None:
        live = [w for w in self.workers.values() if w.process.is_alive()]
        for w in live:
            w.process.terminate()  # SIGTERM: the worker closes its sessions and ports
        end = time.monotonic() + STOP_GRACE_S
        for w in live:
            w.process.join(max(0.0, end - time.monotonic()))
            if w.process.is_alive():
                log.warning(
                    "worker %d (pid %d) did not stop in %.0f s; killing it", w.index, w.process.pid, STOP_GRACE_S
                )
                w.process.kill()
                w.process.join()
        for w in self.workers.values():
            w.status.close()

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM, then stop every worker. Start-up failures raise UserError with the reason
        (RuntimeError where a worker met a bug)."""
        config, held = self._prepare()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for i in range(self.n):
                self._start(config, i)
            if not self._wait_ready():
                raise KeyboardInterrupt
            pids = ", ".join(str(w.process.pid) for w in self.workers.values())
            c = config
            print(
                f"talkstream serving ws://{c.host}:{c.port} (metrics: http://{c.host}:{c.port}/metrics) with "
                f"{self.n} workers (pids {pids}); Ctrl-C stops",
                flush=True,
            )
            if c.http_port is not None:
                print(f"web page and WebRTC: http://{c.host}:{c.http_port}/", flush=True)
            self._watch(config)
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for s in held:
                s.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            if self._own_metrics_dir and self._metrics_dir:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)


def serve_workers(config: ServerConfig, workers: int) -> None:
    """`talkstream serve --workers N` with N above 1."""
    Supervisor(config, workers).run()
