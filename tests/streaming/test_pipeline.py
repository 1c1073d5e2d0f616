"""Pipelines: live input drops the oldest and counts it, tokens wait instead, interrupt resets, failures surface;
fused (every stage in one task) behaves the same."""

from __future__ import annotations

import asyncio

import pytest

from talkstream.streaming.metrics import Metrics
from talkstream.streaming.pipeline import DropOldestQueue, Pipeline, PipelineFailed


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


class HoldUntilEnd:
    """Keeps everything until the end of the stream (as a codec keeps a partial frame)."""

    name = "hold"

    def __init__(self):
        self.held = []

    async def process(self, item):
        self.held.append(item)
        return []

    async def flush(self):
        out, self.held = self.held, []
        return out

    def reset(self):
        self.held = []


class FailsAtEnd(HoldUntilEnd):
    """Holds everything, then fails to flush it."""

    name = "fails-at-end"

    async def flush(self):
        raise RuntimeError("flush failed")


class Gate:
    """Takes one item and waits at the gate: fails when `fail` is set, else waits for ever."""

    name = "gate"

    def __init__(self):
        self.fail = asyncio.Event()

    async def process(self, item):
        await self.fail.wait()
        raise RuntimeError("gate failed")

    def reset(self):
        pass


FUSED = pytest.mark.parametrize("fused", [False, True], ids=["task per stage", "fused"])


async def drain(p):
    out = []
    while (x := await p.get()) is not None:
        out.append(x)
    return out


@FUSED
def test_items_flow_in_order_and_are_counted(fused):
    async def main():
        m = Metrics()
        p = Pipeline([Doubler(), Summer()], m, fused=fused)
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


@FUSED
def test_live_input_drops_oldest_when_behind_and_memory_stays_bounded(fused):
    async def main():
        p = Pipeline([Doubler(delay=0.01)], live_queue_size=4, queue_size=2, fused=fused)
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


@FUSED
def test_tokens_are_never_dropped_the_producer_waits(fused):
    async def main():
        p = Pipeline([Doubler(delay=0.002)], live=False, queue_size=2, fused=fused)
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


@FUSED
@pytest.mark.parametrize("how", ["stop", "failure"])
def test_a_producer_waiting_on_a_full_pipeline_is_released_when_it_stops_or_fails(fused, how):
    """Nothing will make room in a stopped or failed pipeline: a waiting `put` must not wait for ever (a session's
    reader would hang, and the server's shutdown behind it)."""

    async def main():
        gate = Gate()
        p = Pipeline([gate], live=False, queue_size=1, fused=fused)
        p.start()
        await p.put(1)  # taken by the stage, which waits at the gate
        await asyncio.sleep(0.01)
        await p.put(2)  # fills the queue
        waiting = asyncio.create_task(p.put(3))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        if how == "stop":
            await p.stop()
        else:
            gate.fail.set()
        await asyncio.wait_for(waiting, 5)
        if how == "stop":
            await p.put(4)  # discarded: a stopped pipeline takes nothing and makes nobody wait
            assert p.inbox.qsize() == 0
        else:
            with pytest.raises(PipelineFailed, match="gate failed"):
                await p.put(4)
        await p.stop()

    asyncio.run(main())


@FUSED
def test_interrupt_cancels_queued_work_and_resets_state(fused):
    async def main():
        s = Summer()
        p = Pipeline([Doubler(delay=0.005), s], live=False, fused=fused)
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


@FUSED
def test_a_failing_stage_ends_the_stream_with_its_error(fused):
    async def main():
        p = Pipeline([Doubler(), Failing()], fused=fused)
        p.start()
        p.feed(1)
        out = await asyncio.wait_for(drain(p), 5)
        await p.stop()
        return out, p.error

    out, error = asyncio.run(main())
    assert out == [] and isinstance(error, RuntimeError)


@FUSED
@pytest.mark.parametrize("last", [False, True], ids=["then a stage", "last"])
def test_a_stage_whose_flush_fails_ends_the_stream_with_its_error(fused, last):
    async def main():
        stages = [Doubler(), FailsAtEnd()] + ([] if last else [Summer()])
        p = Pipeline(stages, fused=fused)
        p.start()
        p.feed(1)
        await p.end()
        out = await asyncio.wait_for(drain(p), 5)  # a hang guard: the end of the stream must come through
        await p.stop()
        return out, p.error

    out, error = asyncio.run(main())
    assert out == [] and isinstance(error, RuntimeError) and str(error) == "flush failed"


@FUSED
def test_what_a_stage_holds_back_goes_through_the_later_stages_at_the_end(fused):
    async def main():
        p = Pipeline([Doubler(), HoldUntilEnd(), Summer()], fused=fused)
        p.start()
        for i in (1, 2, 3):
            p.feed(i)
        await p.end()
        out = await asyncio.wait_for(drain(p), 5)
        await p.stop()
        return out, p.summary()

    out, summary = asyncio.run(main())
    assert out == [2, 6, 12]  # held until the end, then summed in order by the stage after
    assert summary["sum"]["frames_in"] == 3 and summary["hold"]["frames_out"] == 0


def test_a_fused_pipeline_is_one_task_and_waits_before_its_first_stage():
    async def main():
        p = Pipeline([Doubler(delay=0.05), Summer()], fused=True)
        p.start()
        tasks = len(p._tasks)
        for i in range(3):
            p.feed(i)
        await asyncio.sleep(0.01)
        depths = p.queue_depths()
        await p.stop()
        return tasks, depths

    tasks, depths = asyncio.run(main())
    assert tasks == 1 and depths == {"double": 2}  # one item in the first stage, two waiting before it


def test_drop_oldest_queue():
    q = DropOldestQueue(2)
    for i in range(5):
        q.put_nowait(i)
    assert q.dropped == 3 and [q.get_nowait(), q.get_nowait()] == [3, 4]
