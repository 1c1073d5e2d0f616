"""Real-time pacing: audio leaves at the rate it plays, not faster and not in bursts (aiortc's tracks do the same).

One pacer per outbound stream. A transport with no clock of its own (WebSocket) gets the wall-clock `Pacer`; one
whose media track already plays against the clock (WebRTC) hands the session a pacer bound to that track instead
(`services/webrtc.py`'s `TrackPacer`), so a reply is never metered by two clocks that disagree.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Pacing(Protocol):
    """What a session meters paced output with: `wait(duration_s)` before handing over a chunk of that length;
    `playhead`: when the audio handed over so far ends playing (None or past: nothing is playing); `reset()`:
    forget (and, for a track, drop) what was handed over, as barge-in does."""

    @property
    def playhead(self) -> float | None: ...

    async def wait(self, duration_s: float) -> None: ...

    def reset(self) -> None: ...


class Pacer:
    """Keeps a playhead: each chunk may leave at most `lead_s` before the moment it starts playing.

    A producer faster than real time (a reply decoded in blocks) is metered out; a producer that already runs at
    real time (codec echo of live input) passes straight through; after an underrun the clock restarts at now, so a
    late chunk is never followed by a catch-up burst.
    """

    def __init__(self, lead_s: float = 0.06):
        self.lead_s = lead_s
        self.playhead: float | None = None

    def reset(self) -> None:
        self.playhead = None

    async def wait(self, duration_s: float) -> None:
        now = time.monotonic()
        if self.playhead is None or self.playhead < now:
            self.playhead = now
        ahead = self.playhead - now - self.lead_s
        if ahead > 0:
            await asyncio.sleep(ahead)
        self.playhead += duration_s
