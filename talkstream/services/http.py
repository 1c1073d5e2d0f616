"""The HTTP side of `talkstream serve` (aiohttp, as aiortc's examples): the page, WebRTC signaling, health.

    GET  /            the web page (talkstream/web/index.html; its files under /static/)
    GET  /config      what the page needs: the WebSocket port, the ICE servers, the codec's codebooks
    POST /offer       {sdp, type: "offer", mode, codebooks, token?} -> {sdp, type: "answer", session}
    POST /twilio/voice  a phone call's webhook -> TwiML connecting it to the media stream (services/telephony.py)
    GET  /healthz     200 ok

Refusals are JSON shaped like the protocol's error events, {type: "error", code, message, fatal}, with a 4xx/5xx
status. It runs beside the WebSocket transport on the server's event loop (services/app.py composes them); closing
it closes every peer connection. /metrics is on the WebSocket port only: one endpoint, there with or without this app.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from talkstream.errors import UserError
from talkstream.protocol import error_event
from talkstream.protocol.telephony import twiml, valid_signature
from talkstream.services.webrtc import OfferError, WebRTCService

if TYPE_CHECKING:
    from talkstream.services.ports import ServerPort

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
MAX_BODY_BYTES = 256 * 1024


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, text=error_event(code, message), content_type="application/json")


@web.middleware
async def _json_errors(request: web.Request, handler):
    """aiohttp's own refusals (404, 405, 413) as JSON error bodies too."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(e.status, "bad_request")
        return _error(e.status, code, e.reason)


class HttpService:
    def __init__(self, server: ServerPort):
        self.server = server
        cfg = server.config
        self.rtc = WebRTCService(server, cfg.ice_servers)
        self.app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_json_errors])
        self.app.add_routes(
            [
                web.get("/", self._index),
                web.get("/config", self._config),
                web.post("/offer", self._offer),
                web.post("/twilio/voice", self._twilio_voice),
                web.get("/healthz", self._healthz),
                web.static("/static", WEB_DIR),
            ]
        )
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def port(self) -> int:
        assert self._runner is not None, "HTTP server not started"
        return self._runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://{self.server.config.host}:{self.port}"

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = self.server.config.host, self.server.config.http_port
        self._site = web.TCPSite(self._runner, host, port, reuse_port=self.server.config.reuse_port or None)
        try:
            await self._site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise UserError(
                f"cannot listen on {host}:{port} for HTTP: {e.strerror or e} (--http-port, --no-http)"
            ) from None

    async def stop(self) -> None:
        await self.rtc.close_all()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_DIR / "index.html")

    async def _config(self, request: web.Request) -> web.Response:
        codec = self.server.codec
        ice = [
            {k: getattr(s, k) for k in ("urls", "username", "credential") if getattr(s, k) is not None}
            for s in self.rtc.ice_servers
        ]
        return web.json_response(
            {
                "ws_port": self.server.port,
                "ice_servers": ice,
                "num_codebooks": codec.num_codebooks,
                "kbps_per_codebook": codec.bitrate(1) / 1000,
                "token_required": self.server.config.limits.token is not None,
            }
        )

    async def _offer(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "bad_json", "the body must be JSON: {sdp, type, mode, codebooks}")
        try:
            return web.json_response(await self.rtc.offer(body, request.headers.get("Origin")))
        except OfferError as e:
            log.info("offer refused: %s %s", e.code, e.message)
            return _error(e.status, e.code, e.message)

    async def _twilio_voice(self, request: web.Request) -> web.Response:
        """A call came in: answer with TwiML that connects it to this server's media stream. With an auth token
        (--twilio-auth-token), the request must carry Twilio's signature of its URL and form, or it is refused."""
        cfg = self.server.config
        form = await request.post()
        params = [(k, v) for k, v in form.items() if isinstance(v, str)]
        if cfg.twilio_auth_token:
            # The URL Twilio called: behind a tunnel, the scheme it used is in X-Forwarded-Proto, the host in Host.
            url = f"{request.headers.get('X-Forwarded-Proto', request.scheme)}://{request.host}{request.path_qs}"
            if not valid_signature(cfg.twilio_auth_token, url, params, request.headers.get("X-Twilio-Signature")):
                log.warning("POST /twilio/voice refused: no valid X-Twilio-Signature for %s", url)
                self.server.metrics.errors.labels("bad_signature").inc()
                return _error(403, "bad_signature", "X-Twilio-Signature is missing or does not match this request")
        host = cfg.public_host or request.host
        stream_params = {"token": cfg.limits.token} if cfg.limits.token else None
        log.info("call %s from %s: connecting it to wss://%s/twilio", form.get("CallSid", "?"), form.get("From", "?"),
                 host)
        return web.Response(text=twiml(f"wss://{host}/twilio", stream_params), content_type="text/xml")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")
