from __future__ import annotations

import asyncio
import threading

import pytest

pytest.importorskip("aiortc", reason="WebRTC tests need aiortc and aiohttp (pip install -e '.[test]')")
pytest.importorskip("aiohttp", reason="WebRTC tests need aiortc and aiohttp (pip install -e '.[test]')")

from talkstream.checkpoint import load_audio_codec  # noqa: E402
from talkstream.services.app import ServerConfig, TalkstreamServer  # noqa: E402
from talkstream.streaming.vad import SileroVAD  # noqa: E402


class ServerThread:
    """A real server (WebSocket + HTTP/WebRTC) on its own event loop in a thread, on free ports, so that clients
    in the test (aiortc on another loop, a browser) reach it over loopback as they would any server."""

    def __init__(self, config: ServerConfig, models, responder=None):
        self.config, self.models, self.responder = config, models, responder
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.srv: TalkstreamServer | None = None
        self.error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main():
            codec, vad = self.models
            self.loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            async with TalkstreamServer(self.config, self.responder, codec=codec, vad=vad) as srv:
                self.srv = srv
                self.ready.set()
                await self._stop.wait()

        try:
            asyncio.run(main())
        except BaseException as e:  # surfaced by start()
            self.error = e
            self.ready.set()

    def start(self) -> ServerThread:
        self._thread.start()
        self.ready.wait(120)
        if self.error is not None or self.srv is None:
            raise RuntimeError(f"server did not start: {self.error!r}")
        return self

    def call(self, coro, timeout: float = 30):
        """Run a coroutine on the server's loop (to read its state safely)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def http_url(self) -> str:
        return self.srv.http.url

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config.host}:{self.srv.port}/metrics"  # on the WebSocket port (services/ws.py)

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="session")
def rtc_models():
    return load_audio_codec(), SileroVAD()


@pytest.fixture(scope="session")
def start_server(rtc_models):
    """start_server(config, responder=None) -> a started ServerThread (stop it when done); responder: chat mode's
    answerer in place of the one config.thinker names."""
    return lambda config, responder=None: ServerThread(config, rtc_models, responder).start()
