"""talkstream on Ray Serve: each replica is a talkstream worker; sessions come in through Serve's ingress.

    talkstream serve --ray auto --workers 2         # on a running Ray cluster (`ray start --head` first)
    serve run deploy/ray/serve.yaml                 # or Serve's own CLI, with the options in the YAML

Each replica runs a whole `TalkstreamServer` (its own models, engine, VAD) on its node's loopback, and Serve's
FastAPI ingress bridges to it:

- **WebSocket** `/`: a session is one WebSocket request, and Serve's proxy keeps a request on the replica its router
  chose (the least busy of two sampled) until it ends, so a session stays on its replica for its life. The replica
  relays messages both ways to its own server and passes the server's close code and reason back. A WebSocket
  session counts as one ongoing request for its life, so Serve's `max_ongoing_requests` caps sessions per replica
  and its autoscaler (`target_ongoing_requests`) scales on live sessions per replica.
- **WebRTC** `POST /offer`: signaling through the same ingress, answered by the replica's own server; the answer's
  ICE candidates are that replica's node addresses and UDP ports, so the media goes straight to the replica, not
  through Serve (the nodes' UDP ports must be reachable from clients, or use TURN via `--ice-server`).
- **A replica that dies**: Serve's proxy ends its WebSocket sessions (the client sees the connection close with a
  code); clients reconnect and the router sends them to the live replicas; the others' sessions are not touched.
  Serve starts a new replica in its place.
- **`serve --ray` fails loudly** (`run_on_ray`): replicas the cluster has no room for are a UserError naming what is
  missing, `placement_timeout_s` after the deploy (Serve would wait for ever); SIGINT/SIGTERM at any moment, the
  deploy included, and any failure take down what was deployed (and Serve, when this run started it).
- `/healthz` answers from any replica; `/metrics` from whichever replica the router picks (one endpoint per
  replica: Serve's own metrics carry the per-replica request counts).
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations (WebSocket, Request) at
# run time, and through Serve's class-based ingress string annotations are not resolved.
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request, Response, WebSocket
from ray import serve
from starlette.websockets import WebSocketDisconnect

from talkstream.errors import UserError
from talkstream.services.app import ServerConfig, TalkstreamServer

log = logging.getLogger(__name__)

api = FastAPI(title="talkstream")

SESSIONS_PER_REPLICA = 64  # Serve's max_ongoing_requests: one WebSocket session is one ongoing request


@serve.deployment(
    ray_actor_options={"num_cpus": 1},  # one replica per core, as `serve --workers`
    max_ongoing_requests=SESSIONS_PER_REPLICA,
    health_check_period_s=5,
    graceful_shutdown_timeout_s=10,
)
@serve.ingress(api)
class TalkstreamReplica:
    """One talkstream worker: its server on 127.0.0.1 (any free ports), bridged to Serve's ingress."""

    async def __init__(self, config: ServerConfig | None = None):  # type: ignore[misc]  # Serve awaits it
        import torch

        torch.set_num_threads(1)
        c = config or ServerConfig()
        c = dataclasses.replace(
            c, host="127.0.0.1", port=0, http_port=None if c.http_port is None else 0, reuse_port=False
        )
        self.server = TalkstreamServer(c)
        await self.server.start()  # warm before the replica is reported ready: no client waits for a warm-up
        log.info("replica %d ready: %s", os.getpid(), self.server.url)

    async def check_health(self) -> None:
        if not self.server.ws.serving:
            raise RuntimeError("the talkstream server has stopped")

    async def __del__(self) -> None:
        with contextlib.suppress(Exception):
            await self.server.stop()

    @api.get("/healthz")
    async def healthz(self) -> Response:
        return Response("ok\n", media_type="text/plain")

    @api.get("/metrics")
    async def metrics(self) -> Response:
        return Response(self.server.render_metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @api.post("/offer")
    async def offer(self, request: Request) -> Response:
        """WebRTC signaling through the ingress; the media then flows to this replica's own UDP ports."""
        import aiohttp

        if self.server.http is None:
            return Response(
                '{"type": "error", "code": "not_found", "message": "WebRTC is off (--no-http)", "fatal": true}',
                status_code=404, media_type="application/json",
            )  # fmt: skip
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "origin")}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{self.server.http.url}/offer", data=body, headers=headers) as r:
                return Response(await r.read(), status_code=r.status, media_type="application/json")

    @api.websocket("/")
    async def session(self, client: WebSocket) -> None:
        """Relay one session between Serve's ingress and this replica's server, close code included."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed
        from websockets.typing import Origin

        await client.accept()
        origin = client.headers.get("origin")  # the server's origin policy sees the browser's origin
        try:
            upstream = await connect(
                self.server.url, origin=Origin(origin) if origin else None, max_size=None, compression=None,
                open_timeout=10, ping_interval=None,
            )  # fmt: skip
        except (OSError, TimeoutError) as e:
            await client.close(1011, f"replica unavailable: {e}"[:120])
            return

        client_gone = False

        async def up() -> None:
            nonlocal client_gone
            while True:
                msg = await client.receive()
                if msg["type"] == "websocket.disconnect":
                    client_gone = True
                    return
                data = msg.get("bytes")
                await upstream.send(data if data is not None else msg.get("text") or "")

        async def down() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for data in upstream:
                    if isinstance(data, bytes):
                        await client.send_bytes(data)
                    else:
                        await client.send_text(data)

        tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for t in done:
                if not t.cancelled() and t.exception() and not isinstance(t.exception(), WebSocketDisconnect):
                    log.info("session relay ended: %r", t.exception())
        finally:
            await upstream.close()
            code, reason = upstream.close_code or 1000, upstream.close_reason or ""
            if not client_gone:
                with contextlib.suppress(Exception):
                    await client.close(1000 if code in (1005, 1006) else code, reason)


def application(
    config: ServerConfig | None = None,
    replicas: int | None = None,
    max_replicas: int = 8,
    autoscaling: dict[str, Any] | None = None,
):
    """The Serve application: `replicas` fixed, or None to scale 1..max_replicas on live sessions per replica
    (`autoscaling`: Serve AutoscalingConfig fields over the defaults below)."""
    if replicas is not None and replicas < 1:
        raise UserError(f"--workers must be at least 1 (got {replicas})")
    options: dict[str, Any]
    if replicas is None:
        options = {
            "num_replicas": "auto",
            "autoscaling_config": {
                "min_replicas": 1,
                "max_replicas": max_replicas,
                "target_ongoing_requests": 8,  # live sessions per replica before another is started
                "upscale_delay_s": 10,
                "downscale_delay_s": 300,  # a session lasts minutes: do not drain replicas on a lull
                **(autoscaling or {}),
            },
        }
    else:
        options = {"num_replicas": replicas}
    return TalkstreamReplica.options(**options).bind(config)  # type: ignore[attr-defined]


def build(args: dict) -> serve.Application:
    """`serve run deploy/ray/serve.yaml`: the YAML's `args` are ServerConfig fields plus `replicas`."""
    args = dict(args or {})
    replicas = args.pop("replicas", None)
    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    unknown = sorted(set(args) - fields)
    if unknown:
        raise UserError(f"unknown talkstream options in the Serve config: {', '.join(unknown)}")
    return application(ServerConfig(**args), replicas)


APP = "talkstream"  # the Serve application's name


class _Stopped(BaseException):
    """SIGINT or SIGTERM arrived: unwind from wherever the main thread is (connecting, deploying, serving)."""


@contextlib.contextmanager
def _signals(handler) -> Iterator[None]:
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _stop(signum, frame) -> None:
    raise _Stopped


def replica_resources() -> dict[str, float]:
    """What one replica asks of the cluster, in Ray's resource names ({"CPU": 1.0})."""
    o = TalkstreamReplica.ray_actor_options or {}  # type: ignore[attr-defined]
    need = {"CPU": float(o.get("num_cpus", 1)), "GPU": float(o.get("num_gpus", 0)),
            "memory": float(o.get("memory", 0)), **{k: float(v) for k, v in (o.get("resources") or {}).items()}}
    return {k: v for k, v in need.items() if v > 0}


def _amounts(resources: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in resources.items()) or "nothing"


def unplaced_message(address: str, replicas: int, need: dict[str, float], free_before: dict[str, float],
                     free_now: dict[str, float], total: dict[str, float]) -> str | None:
    """Why some of `replicas` cannot be placed, or None while they may be. The replicas placed so far hold what
    left `free_before`; the rest wait for room, and there is none when `free_now` lacks one replica's share."""
    placed = min(round((free_before.get(k, 0) - free_now.get(k, 0)) / v) for k, v in need.items())
    waiting = replicas - max(placed, 0)
    if waiting <= 0 or all(free_now.get(k, 0) >= v for k, v in need.items()):
        return None
    missing = {k: waiting * v - free_now.get(k, 0) for k, v in need.items() if waiting * v > free_now.get(k, 0)}
    return (f"{waiting} of {replicas} replicas cannot be placed on the Ray cluster at {address}: each asks for "
            f"{_amounts(need)}, the cluster has {_amounts({k: total.get(k, 0) for k in need})} in all and "
            f"{_amounts({k: free_now.get(k, 0) for k in need})} free (missing {_amounts(missing)}); add nodes, or "
            f"ask for fewer replicas (--workers)")


def _deploy(config: ServerConfig, address: str, replicas: int | None, placement_timeout_s: float) -> None:
    """Deploy and wait until every replica runs; UserError when some cannot be placed after `placement_timeout_s`
    (Serve itself would wait for ever) or the replicas fail to start."""
    import ray

    need, target = replica_resources(), replicas or 1  # autoscaled: min_replicas
    free_before = ray.available_resources()
    serve.run_many([serve.RunTarget(application(config, replicas), name=APP, route_prefix="/")],
                   wait_for_applications_running=False)
    since = time.monotonic()
    while True:
        status = serve.status().applications.get(APP)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status == "DEPLOY_FAILED":
            said = " ".join(d.message for d in status.deployments.values() if d.message) or status.message
            raise UserError(f"the replicas failed to start: {said.splitlines()[0] if said else 'no reason given'}")
        if time.monotonic() - since > placement_timeout_s:
            why = unplaced_message(address, target, need, free_before, ray.available_resources(),
                                   ray.cluster_resources())
            if why is not None:
                raise UserError(why)
        time.sleep(0.5)


def _take_down(deployed: bool, started_serve: bool) -> None:
    """Delete the application; stop Serve too (its proxy holds the port) when this run started it and nothing else
    is deployed. A failure is said, with what to run by hand, and does not hide the error that led here."""
    try:
        if deployed:
            serve.delete(APP)
        if started_serve and not serve.status().applications:
            serve.shutdown()
    except Exception as e:
        print(f"talkstream: could not take down the Serve application {APP!r} ({type(e).__name__}: {e}); "
              f"`serve shutdown` on the cluster removes it", file=sys.stderr, flush=True)


def run_on_ray(config: ServerConfig, address: str, replicas: int | None, placement_timeout_s: float = 10.0) -> None:
    """`talkstream serve --ray ADDRESS`: deploy on the cluster, serve until Ctrl-C/SIGTERM, then take it down.

    A signal at any moment (connecting, deploying, serving) takes down what was deployed before the process exits; so
    does a failure (replicas that cannot be placed: a UserError after `placement_timeout_s`, naming what is missing).
    """
    import socket

    import ray

    if address != "auto" and "://" not in address:  # HOST:PORT of the head: Ray itself would retry for minutes
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as e:
            raise UserError(f"cannot reach the Ray cluster at {address} (ray start --head there first): {e}") from None
    deployed = started_serve = False
    try:
        with _signals(_stop):  # installed before anything is deployed: a signal during serve.run unwinds too
            try:
                ray.init(address=address, logging_level=logging.WARNING)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise UserError(f"cannot reach the Ray cluster at {address}: {e}") from None
            for sig in (signal.SIGINT, signal.SIGTERM):  # again: ray.init put in Ray's own, which aborts the process
                signal.signal(sig, _stop)
            started_serve = not serve.status().proxies  # no Serve on the cluster yet: this run starts it
            serve.start(http_options={"host": config.host, "port": config.port})
            print(f"deploying {replicas or 'autoscaled'} replicas on the Ray cluster at {address}", flush=True)
            deployed = True  # from here on something may exist to take down, even if the deploy is cut short
            _deploy(config, address, replicas, placement_timeout_s)
            print(
                f"talkstream serving ws://{config.host}:{config.port} through Ray Serve "
                f"({replicas or 'autoscaled'} replicas); Ctrl-C stops",
                flush=True,
            )
            while True:
                time.sleep(0.5)
    except _Stopped:
        pass
    finally:
        with _signals(signal.SIG_IGN):  # a second signal must not cut the clean-up short
            if ray.is_initialized():
                if deployed:  # replicas get Serve's grace period (10 s) to close their sessions
                    print("talkstream: taking down the Serve application", file=sys.stderr, flush=True)
                _take_down(deployed, started_serve)
            ray.shutdown()


app = build({})  # `serve run talkstream.services.ray_serve:app`: the defaults of `talkstream serve`, WebSocket only
