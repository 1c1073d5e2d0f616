"""The one session registry both transports admit through: origin, token, capacity, and its accounting."""

from __future__ import annotations

import asyncio

import pytest

from talkstream.services.registry import Refused, SessionRegistry, origin_allowed, token_matches
from talkstream.streaming.metrics import Metrics


def refusal(registry: SessionRegistry, **kw) -> str | None:
    try:
        registry.admit(**kw)
    except Refused as e:
        assert e.message
        return e.code
    return None


@pytest.mark.parametrize(
    "origin, allowed, ok",
    [
        (None, None, True),  # not a browser
        ("http://localhost:8080", None, True),
        ("http://127.0.0.1:8080", None, True),
        ("https://evil.example", None, False),
        ("https://app.example", ["https://app.example"], True),
        ("https://evil.example", ["https://app.example"], False),
        ("https://evil.example", ["*"], True),
    ],
)
def test_origins(origin, allowed, ok):
    assert origin_allowed(origin, allowed) is ok


def test_tokens():
    assert token_matches(None, None) and token_matches("x", None)
    assert token_matches("s3cret", "s3cret") and not token_matches("wrong", "s3cret") and not token_matches(None, "s")


def test_admission_and_accounting():
    metrics = Metrics()
    reg = SessionRegistry(max_sessions=2, allowed_origins=None, token="s3cret", metrics=metrics)
    assert refusal(reg, origin="https://evil.example") == "origin_not_allowed"
    assert refusal(reg, token="wrong", check_token=True) == "unauthorized"
    assert refusal(reg) is None  # a WebSocket's token comes with hello: the protocol checks it there
    assert refusal(reg, token="s3cret", check_token=True) is None

    async def stop():
        pass

    a, b = object(), object()
    reg.add(a, stop)
    reg.add(b, stop)
    assert len(reg) == 2 and a in reg and set(reg) == {a, b}
    assert refusal(reg) == "busy"
    reg.remove(a)
    reg.remove(a)  # a second remove does nothing
    assert len(reg) == 1 and refusal(reg) is None
    text = metrics.render().decode()
    assert "talkstream_sessions_active 1.0" in text and "talkstream_sessions_total 2.0" in text
    for code in ("origin_not_allowed", "unauthorized", "busy"):
        assert f'talkstream_errors_total{{code="{code}"}} 1.0' in text


def test_close_all_stops_every_session_and_refuses_new_ones():
    reg = SessionRegistry(max_sessions=8, allowed_origins=None, token=None, metrics=Metrics())
    stopped = []

    def stopper(s):
        async def stop():
            await asyncio.sleep(0)
            stopped.append(s)
            reg.remove(s)

        return stop

    async def main():
        for s in range(3):
            reg.add(s, stopper(s))
        await reg.close_all()

    asyncio.run(main())
    assert sorted(stopped) == [0, 1, 2] and len(reg) == 0
    assert refusal(reg) == "busy"
