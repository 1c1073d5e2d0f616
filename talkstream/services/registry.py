"""The server's one registry of live sessions, for every transport: who may open one, and how many are open.

WebSocket and WebRTC both ask `admit` before they build a session (the page's origin, the token when the transport
carries it before hello, the server's capacity) and `open` a `Slot` for it, which counts the session in the
Prometheus gauges until it is released; `close_all` tells every live session the server is stopping.
A refusal is a `Refused` with the protocol's error code; it is counted in `errors` by code.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from talkstream.streaming.metrics import Metrics


class Refused(Exception):
    """A connection the server will not take: the protocol's error code and a message for the client."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def origin_allowed(origin: str | None, allowed: list[str] | None) -> bool:
    """Browsers send Origin; other clients do not (the token, if set, is their guard). allowed None: only pages
    served from localhost; "*": any page."""
    if origin is None:
        return True
    if allowed is not None:
        return "*" in allowed or origin in allowed
    return urlsplit(origin).hostname in ("localhost", "127.0.0.1", "::1")


def token_matches(given: str | None, wanted: str | None) -> bool:
    """No token set: anyone. Otherwise the given one, compared in constant time."""
    return wanted is None or hmac.compare_digest((given or "").encode(), wanted.encode())


class SessionRegistry:
    def __init__(self, max_sessions: int, allowed_origins: list[str] | None, token: str | None, metrics: Metrics):
        self.max_sessions, self.allowed_origins, self.token = max_sessions, allowed_origins, token
        self.metrics = metrics
        self._live: dict[Any, Callable[[], Awaitable[None]]] = {}  # session -> how to stop it at shutdown
        self.stopping = False

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._live))

    def __contains__(self, session: object) -> bool:
        return session in self._live

    def admit(self, origin: str | None = None, token: str | None = None, check_token: bool = False) -> None:
        """Refused (counted) when the origin is not allowed, the token is wrong (check_token: transports that carry
        it before hello; a WebSocket's comes in hello, checked by the protocol) or every slot is taken."""
        if self.stopping:
            self._refuse("busy", "the server is shutting down")
        if not origin_allowed(origin, self.allowed_origins):
            self._refuse("origin_not_allowed", f"origin {origin} is not allowed")
        if check_token and not token_matches(token, self.token):
            self._refuse("unauthorized", "missing or wrong token")
        if len(self._live) >= self.max_sessions:
            self._refuse("busy", f"server is at its limit of {self.max_sessions} sessions; try later")

    def _refuse(self, code: str, message: str) -> None:
        self.metrics.errors.labels(code).inc()
        raise Refused(code, message)

    def add(self, session: Any, stop: Callable[[], Awaitable[None]]) -> None:
        """Count a live session; `stop()` ends it (the client told) when the server stops."""
        self._live[session] = stop
        self.metrics.sessions.inc()
        self.metrics.sessions_total.inc()

    def remove(self, session: Any) -> None:
        """The session is gone (however it ended); a second call does nothing."""
        if self._live.pop(session, None) is not None:
            self.metrics.sessions.dec()

    async def close_all(self) -> None:
        """Server shutdown: refuse new sessions, stop every live one (each tells its client), wait for them."""
        self.stopping = True
        await asyncio.gather(*(stop() for stop in list(self._live.values())), return_exceptions=True)


class ConversationSlots:
    """Chat conversations a worker holds at once: each costs the ears, the Thinker and the Talker, far more than a
    codec session, so past `limit` a new one is refused `busy` at its hello (never a slow answer for everyone).
    None: no limit. Per worker process (each has its own models and cores)."""

    def __init__(self, limit: int | None):
        if limit is not None and limit < 1:
            raise ValueError(f"a conversation limit must be at least 1 (got {limit})")
        self.limit = limit
        self._holders: set[Any] = set()

    def __len__(self) -> int:
        return len(self._holders)

    def take(self, holder: Any) -> bool:
        """A slot for `holder` (True if it already has one); False when every slot is taken."""
        if holder in self._holders:
            return True
        if self.limit is not None and len(self._holders) >= self.limit:
            return False
        self._holders.add(holder)
        return True

    def release(self, holder: Any) -> None:
        self._holders.discard(holder)
