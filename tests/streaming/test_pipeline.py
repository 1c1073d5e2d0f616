"""Pipelines: live input drops the oldest and counts it, tokens wait instead, interrupt resets, failures surface."""

from __future__ import annotations

import asyncio

import pytest

from talkstream.streaming.metrics import Metrics
from talkstream.streaming.pipeline import DropOldestQueue, Pipeline


class Doubler:
    name = "double"

    def __init__(self, delay: float = 0.0):
        self.delay, self.seen = delay, []

    async def process(self, item):
        await asyncio.sleep(self.delay)
        self.seen.append(item)
        return [item * 2]

    def reset(self):
        self.seen = []


class Summer:
    """Stateful: emits the running sum (so a reset is visible in the output)."""

    name = "sum"

    def __init__(self):
        self.total = 0

    async def process(self, item):
        self.total += item
        return [self.total]

    def reset(self):
        self.total = 0


class Failing:
    name = "fail"

    async def process(self, item):
        raise RuntimeError("boom")

    def reset(self):
        pass


async def drain(p):
    out = []
    while (x := await p.get()) is not None:
        out.append(x)
    return out


def test_items_flow_in_order_and_are_counted():
    async def main():
        m = Metrics()
        p = Pipeline([Doubler(), Summer()], m)
        p.start()
        for i in range(1, 6):
            p.feed(i)
        await p.end()
        out = await drain(p)
        await p.stop()
        return out, p.summary(), m.render().decode()

    out, summary, text = asyncio.run(main())
    assert out == [2, 6, 12, 20, 30]
    assert summary["double"]["frames_in"] == 5 and summary["sum"]["frames_out"] == 5
    assert 'talkstream_stage_frames_in_total{stage="double"} 5.0' in text


def test_live_input_drops_oldest_when_behind_and_memory_stays_bounded():
    async def main():
        p = Pipeline([Doubler(delay=0.01)], live_queue_size=4, queue_size=2)
        p.start()
        for i in range(100):  # a burst far faster than the stage
            p.feed(i)
        assert p.inbox.qsize() <= 4
        await p.end()
        out = await drain(p)
        await p.stop()
        return out, p.stats["double"].drops

    out, drops = asyncio.run(main())
    assert drops >= 90 and len(out) + drops == 100
    assert out[-1] == 2 * 99  # the newest audio survives, the oldest went


def test_tokens_are_never_dropped_the_producer_waits():
    async def main():
        p = Pipeline([Doubler(delay=0.002)], live=False, queue_size=2)
        p.start()
        with pytest.raises(TypeError):
            p.feed(1)
        consumer = asyncio.create_task(drain(p))
        for i in range(50):
            await p.put(i)
            assert p.inbox.qsize() <= 2
        await p.end()
        out = await consumer
        await p.stop()
        return out

    assert asyncio.run(main()) == [2 * i for i in range(50)]


def test_interrupt_cancels_queued_work_and_resets_state():
    async def main():
        s = Summer()
        p = Pipeline([Doubler(delay=0.005), s], live=False)
        p.start()
        for _i in range(20):
            await p.put(1)
        await asyncio.sleep(0.02)
        await p.interrupt()
        assert s.total == 0 and all(q.empty() for q in p.queues)
        await p.put(5)
        await p.end()
        out = await drain(p)
        await p.stop()
        return out

    assert asyncio.run(main()) == [10]  # a fresh sum: nothing from before the interrupt leaks through


def test_a_failing_stage_ends_the_stream_with_its_error():
    async def main():
        p = Pipeline([Doubler(), Failing()])
        p.start()
        p.feed(1)
        out = await asyncio.wait_for(drain(p), 5)
        await p.stop()
        return out, p.error

    out, error = asyncio.run(main())
    assert out == [] and isinstance(error, RuntimeError)


def test_drop_oldest_queue():
    q = DropOldestQueue(2)
    for i in range(5):
        q.put_nowait(i)
    assert q.dropped == 3 and [q.get_nowait(), q.get_nowait()] == [3, 4]
