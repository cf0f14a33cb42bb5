"""The ASGI entry point's limit: requests are prepared a few at a time; a stream stops counting at its first byte."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from scheduler_site.asgi import PreparingLimit


def test_at_most_limit_requests_are_prepared_at_once_and_open_streams_do_not_count() -> None:
    counts = {"preparing": 0, "most": 0, "streaming": 0}

    async def scenario() -> int:
        done = asyncio.Event()
        all_streaming = asyncio.Event()
        sent: list[Any] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            counts["preparing"] += 1
            counts["most"] = max(counts["most"], counts["preparing"])
            await asyncio.sleep(0.01)  # stands for the view's thread: auth, the task, the admission
            counts["preparing"] -= 1
            await send({"type": "http.response.start", "status": 200, "headers": []})
            counts["streaming"] += 1
            if counts["streaming"] == 30:
                all_streaming.set()
            await done.wait()  # a stream that stays open

        async def send(message: Any) -> None:
            sent.append(message)

        gate = PreparingLimit(app, limit=3)
        requests = [asyncio.create_task(gate({"type": "http"}, None, send)) for _ in range(30)]
        await all_streaming.wait()  # 30 open streams, 10 times the limit: none blocked the next request
        done.set()
        await asyncio.gather(*requests)
        return len(sent)

    assert asyncio.run(asyncio.wait_for(scenario(), timeout=30)) == 30
    assert counts["most"] == 3


def test_a_request_that_fails_before_answering_gives_its_place_back() -> None:
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    async def scenario() -> None:
        gate = PreparingLimit(failing, limit=1)
        for _ in range(3):  # had the place not been given back, the second would wait for ever
            with contextlib.suppress(RuntimeError):
                await asyncio.wait_for(gate({"type": "http"}, None, None), timeout=5)

    asyncio.run(scenario())
