"""A set of background tasks that one owner holds, sees fail, and cancels together.

asyncio keeps only weak references to tasks, so a task nobody holds may be collected mid-way, and an exception in
a task nobody awaits is lost. Every owner of background work (a session, a transport, a registry) spawns through a
`TaskSet`: it holds each task until it is done, logs whatever one raised (with the owner's name), and
`cancel()` stops the rest at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class TaskSet:
    def __init__(self, owner: str, on_error: Callable[[BaseException], None] | None = None):
        """owner: named in the log line of a failed task. on_error: also called with the exception (to count it)."""
        self.owner, self.on_error = owner, on_error
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Awaitable, name: str | None = None) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        if name is not None:
            task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (e := task.exception()) is not None:
            log.error("%s: task %s failed", self.owner, task.get_name(), exc_info=e)
            if self.on_error is not None:
                self.on_error(e)

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel(self) -> None:
        """Cancel every task but the caller's own, and wait until they have stopped."""
        me = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait(self) -> None:
        """Wait for every task to finish by itself (failures are logged, not raised)."""
        me = asyncio.current_task()
        await asyncio.gather(*(t for t in list(self._tasks) if t is not me), return_exceptions=True)
