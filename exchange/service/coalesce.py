"""Requests of many tasks answered by one call: the outbox's senders, woken together by one post,
read their queues and record what they sent and what was delivered in one statement each, not
one per partner (bench/README.md, fanout_wired.py).

One call runs at a time; the requests that arrive meanwhile wait and go in the next one, so calls
grow with load, as the store's group commits do. A caller that knows more requests are on their
way (`more`) has a call wait for them, for at most `window` seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from exchange.clock import stop_requested, wait_event
from exchange.errors import Unavailable

A = TypeVar("A")
R = TypeVar("R")

# A call answers each request in order, with its result or the exception that request raises.
Many = Callable[[Sequence[A]], Awaitable[Sequence[R | Exception]]]
# Whether more requests are on their way, given how many are gathered.
More = Callable[[int], bool]


class Coalesced(Generic[A, R]):
    """`await coalesced(request)`: answered by a call of `many` on the requests gathered with it.

    A call that fails is made again for each of its requests alone, so that one request that
    spoils it (a malformed row, a conflict) does not fail the others; unless `shared(exc)` says
    the failure is everyone's (the store busy or down), which each request then raises as it is.

    While `more(gathered)` says more requests are on their way, a call waits for them, for at
    most `window` seconds once it is ready to be made: one call (one transaction, one audit entry per
    bulletin) for many partners' answers that arrive a few milliseconds apart, rather than one each.
    """

    def __init__(
        self,
        many: Many[A, R],
        name: str,
        shared: Callable[[Exception], bool] = lambda _: False,
        *,
        more: More = lambda _: False,
        window: float = 0.0,
    ) -> None:
        self._many = many
        self._name = name
        self._shared = shared
        self._more = more
        self._window = window
        self._asks: list[tuple[A, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()

    async def __call__(self, request: A) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._asks.append((request, future))
        self._arrived.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)
            self._task.add_done_callback(self._ended)
        return await future

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A call cancelled before it began never ran its `finally`: it is done all the same, and
        its requests are failed, or every later request would wait for it for ever (found by a
        read-only review). A call that ran has cleared `_task` itself, and is left alone."""
        if self._task is not task:
            return
        self._task = None
        left, self._asks = self._asks, []
        for _, future in left:
            if not future.done():
                future.set_exception(Unavailable("the node is stopping"))

    def task(self) -> asyncio.Task[None] | None:
        """The call under way, if any (for the node to cancel when it stops)."""
        return self._task

    async def _run(self) -> None:
        asks: list[tuple[A, asyncio.Future[R]]] = []
        try:
            while self._asks:
                await asyncio.sleep(0)  # the other tasks woken with the first ask theirs too
                await self._gather()
                asks, self._asks = [a for a in self._asks if not a[1].done()], []
                if not asks:
                    continue
                try:
                    answers = list(await self._many([r for r, _ in asks]))
                except Exception as exc:
                    alone = len(asks) > 1 and not self._shared(exc)
                    answers = [await self._alone(r) for r, _ in asks] if alone else [exc] * len(asks)
                for (_, future), answer in zip(asks, answers, strict=True):
                    if future.done():  # its caller was cancelled
                        continue
                    if isinstance(answer, Exception):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
        finally:  # cancelled (the node stops): nobody is left waiting
            self._task = None
            left, self._asks = asks + self._asks, []
            for _, future in left:
                if not future.done():
                    future.set_exception(Unavailable("the node is stopping"))

    async def _gather(self) -> None:
        """Wait, at most the window, while more requests are said to be on their way."""
        if self._window <= 0 or not self._more(len(self._asks)):
            return
        loop = asyncio.get_running_loop()
        until = loop.time() + self._window
        while self._more(len(self._asks)) and (left := until - loop.time()) > 0:
            self._arrived.clear()
            await wait_event(self._arrived, left)
            if stop_requested():  # cancelled as the wait ended: the asks are failed, not run
                raise asyncio.CancelledError

    def nudge(self) -> None:
        """What `more` says may have changed otherwise than by a request (a push ended without
        answering): a call waiting for more looks again."""
        self._arrived.set()

    async def _alone(self, request: A) -> R | Exception:
        try:
            return (await self._many([request]))[0]
        except Exception as exc:
            return exc


__all__ = ["Coalesced"]
