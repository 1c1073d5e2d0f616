"""The WebRTC data channel's backpressure: a client that stops reading its events makes the server's sends wait
(as a WebSocket's do) instead of piling them up in the SCTP send buffer, so the session's send timeout can close it."""

from __future__ import annotations

import asyncio
from collections import deque
from types import SimpleNamespace

import pytest

from talkstream.services.webrtc import PeerSession


class Channel:
    """A data channel whose unread bytes the test sets."""

    def __init__(self, buffered: int):
        self.readyState, self.bufferedAmount, self.sent = "open", buffered, []

    def send(self, text: str) -> None:
        self.sent.append(text)
        self.bufferedAmount += len(text)


def peer(channel: Channel, limit: int = 1000):
    return SimpleNamespace(channel=channel, service=SimpleNamespace(max_channel_buffer=limit), _pending=deque())


def test_an_event_waits_while_the_client_has_not_read_and_goes_once_it_has():
    async def main():
        ch = Channel(buffered=5000)
        p = peer(ch)
        sending = asyncio.create_task(PeerSession.event(p, '{"type": "stats"}'))
        await asyncio.sleep(0.1)
        waited = not sending.done() and ch.sent == []
        ch.bufferedAmount = 0  # the client read it all
        await asyncio.wait_for(sending, 1)
        return waited, ch.sent

    waited, sent = asyncio.run(main())
    assert waited and sent == ['{"type": "stats"}']


def test_a_client_that_never_reads_runs_the_send_into_its_timeout():
    """What the session's `_deliver` does with `send_timeout_s`: the wait ends in TimeoutError, not in memory."""
    async def main():
        ch = Channel(buffered=10_000)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await PeerSession.event(peer(ch), "x" * 100)
        return ch

    assert asyncio.run(main()).sent == []


def test_below_the_limit_events_go_at_once_and_before_open_they_wait_in_order():
    async def main():
        ch = Channel(buffered=10)
        p = peer(ch)
        await asyncio.wait_for(PeerSession.event(p, "a"), 0.05)
        ch.readyState = "connecting"
        await PeerSession.event(p, "b")
        return ch.sent, list(p._pending)

    sent, pending = asyncio.run(main())
    assert sent == ["a"] and pending == ["b"]
