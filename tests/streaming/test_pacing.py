"""Pacing: audio made faster than real time leaves at the rate it plays (lower bounds only: sleeps never run short)."""

from __future__ import annotations

import asyncio
import time

from talkstream.streaming.pacing import Pacer


def test_fast_producer_is_metered_to_real_time():
    async def main():
        pacer, t0 = Pacer(lead_s=0.05), time.monotonic()
        for _ in range(25):  # 0.5 s of audio in 20 ms chunks, produced instantly
            await pacer.wait(0.02)
        return time.monotonic() - t0

    assert asyncio.run(main()) >= 0.5 - 0.05 - 0.02


def test_real_time_producer_passes_straight_through():
    async def main():
        pacer, waits = Pacer(lead_s=0.05), []
        for _ in range(5):
            await asyncio.sleep(0.03)  # slower than the 20 ms chunks play: an underrun every time
            t = time.monotonic()
            await pacer.wait(0.02)
            waits.append(time.monotonic() - t)
        return waits

    # After an underrun the clock restarts at now: no catch-up burst and no waiting.
    assert all(w < 0.01 for w in asyncio.run(main()))
