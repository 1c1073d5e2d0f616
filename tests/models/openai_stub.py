"""A loopback OpenAI-compatible chat-completions endpoint for tests (aiohttp), shared by the Thinker's and the
server's tests."""

from __future__ import annotations

from aiohttp import web


async def with_openai_stub(endpoint, body):
    """Serve `endpoint.handle` at /v1/chat/completions on a free port, run `await body(base_url)`, clean up."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", endpoint.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        return await body(f"http://127.0.0.1:{port}/v1")
    finally:
        await runner.cleanup()
