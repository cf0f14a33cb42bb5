"""Live streams (`GET /api/v1/tasks/{id}/logs/?follow=1` and `…/timeline/?follow=1`) as the stream process serves
them (ASGI, docs/architecture.md "Live streams").

* `StreamSlots`: how many streams this process holds, per token and in all; one more than a cap is a 429.
* `LiveHub`: one poll of the database every SCHEDULER_SSE_POLL_SECONDS serves every follower of every task of
  the process (two queries, whatever the number of followers), on one thread of its own; the followers only
  wait on the event loop. A follower that joins gets its backlog at the next poll, which it wakes at once.
* `event_stream`: one client's bytes: the events, a keep-alive comment when nothing was sent for
  SCHEDULER_SSE_KEEPALIVE_SECONDS, a "timeout" event after SCHEDULER_SSE_MAX_SECONDS. When the client goes away
  the server cancels it (Django's ASGI handler), which frees its slot and its place in the hub at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, connection

from tasks_app import selectors
from tasks_app.logstream import FEEDS, LOGS, SSE_KEEPALIVE, SSE_PREAMBLE, TIMELINE, LogEvent, sse_event, timeline_event
from tasks_app.models import TERMINAL_STATUSES

logger = logging.getLogger(__name__)

# Events a follower may have waiting (its client reads slower than its task writes) before its stream is ended;
# the client reconnects with Last-Event-ID and catches up from the database.
FOLLOWER_BACKLOG = 5000


# --- admission ------------------------------------------------------------------------------------------
class Slot:
    """One admitted stream. Released exactly once, by the stream's end or, if the stream never started (the client
    left before its first byte), when the stream is garbage-collected."""

    def __init__(self, slots: StreamSlots, key: str) -> None:
        self._slots, self._key, self._held = slots, key, True

    def release(self) -> None:
        self._slots._release(self)

    def bind(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        weakref.finalize(stream, self.release)
        return stream


class StreamSlots:
    """Streams held by this process, per client (token, or user for the admin's session) and in all. Admitted in
    the view's thread, released on the event loop: a lock keeps the counts exact."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._per_key: Counter[str] = Counter()
        self.total = 0

    def acquire(self, key: str, *, per_key_limit: int, total_limit: int) -> Slot | str:
        """A slot, or why there is none (which cap is full)."""
        with self._lock:
            if self.total >= total_limit:
                return f"this server already serves its maximum of {total_limit} live streams"
            if self._per_key[key] >= per_key_limit:
                return f"this token already has its maximum of {per_key_limit} live streams open"
            self._per_key[key] += 1
            self.total += 1
            return Slot(self, key)

    def held(self, key: str) -> int:
        with self._lock:
            return self._per_key[key]

    def _release(self, slot: Slot) -> None:
        with self._lock:
            if not slot._held:
                return
            slot._held = False
            self.total -= 1
            self._per_key[slot._key] -= 1
            if self._per_key[slot._key] <= 0:
                del self._per_key[slot._key]


STREAM_SLOTS = StreamSlots()


# --- the hub --------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Follower:
    task_id: Any
    after: int  # next sequence number this client needs of `run_id`
    feed: str = LOGS  # live output, or the timeline
    run_id: int | None = None
    status: str = ""
    queue: asyncio.Queue[LogEvent | None] = field(default_factory=asyncio.Queue)  # None: the hub ended it


@dataclass(frozen=True)
class _View:
    """What the poll thread reads of a follower (the followers themselves are only touched on the loop)."""

    follower: Follower
    task_id: Any
    run_id: int | None
    after: int
    feed: str = LOGS


@dataclass
class _Update:
    events: list[LogEvent]
    run_id: int | None
    after: int
    status: str
    finished: bool


def _poll(views: list[_View], batch: int) -> tuple[list[tuple[Follower, _Update]], bool]:
    """One poll for every follower: each one's new events, and whether the batch was full (poll again at once).

    Runs on the hub's own thread. The same order as logstream.follow: status (with the last chunk) first, then
    the chunks, so a terminal status is only announced once everything written before it has been sent."""
    states = selectors.tasks_follow_state(task_ids={v.task_id for v in views})
    plans: list[tuple[_View, _Update]] = []
    wanted: dict[str, dict[int, int]] = {feed: {} for feed in FEEDS}
    for view in views:
        state = states.get(view.task_id)
        if state is None:  # the task is gone
            plans.append((view, _Update([LogEvent("end", "deleted")], view.run_id, view.after, "deleted", True)))
            continue
        update = _Update([], view.run_id, view.after, state.status, False)
        if state.run_id is not None and state.run_id != view.run_id:
            if view.run_id is not None:  # a retry: its output is numbered from 0 again
                update.after = 0
            update.run_id = state.run_id
            update.events.append(LogEvent("attempt", str(state.attempt)))
        last = _last_seq(state, view.feed)
        if update.run_id is not None and last is not None and last >= update.after:
            per_run = wanted[view.feed]
            per_run[update.run_id] = min(per_run.get(update.run_id, update.after), update.after)
        plans.append((view, update))
    chunks = selectors.runs_log_chunks(after=wanted[LOGS], limit=batch)
    events = selectors.runs_events(after=wanted[TIMELINE], limit=batch)
    by_run: dict[tuple[str, int], list[LogEvent]] = defaultdict(list)
    for chunk in chunks:
        by_run[LOGS, chunk.run_id].append(LogEvent(chunk.stream, chunk.data, chunk.seq))
    for event in events:
        by_run[TIMELINE, event.run_id].append(timeline_event(event))
    for view, update in plans:
        if update.finished:
            continue
        for item in by_run.get((view.feed, update.run_id), ()):  # type: ignore[arg-type]
            if item.seq is not None and item.seq >= update.after:
                update.events.append(item)
                update.after = item.seq + 1
        state = states[view.task_id]
        last = _last_seq(state, view.feed)
        drained = last is None or update.run_id != state.run_id or update.after > last
        if state.status in TERMINAL_STATUSES and drained:
            update.events.append(LogEvent("end", state.status))
            update.finished = True
    return [(view.follower, update) for view, update in plans], len(chunks) >= batch or len(events) >= batch


def _last_seq(state: selectors.FollowState, feed: str) -> int | None:
    return state.last_event_seq if feed == TIMELINE else state.last_seq


def _close_connection() -> None:
    connection.close()


class LiveHub:
    """Every follower of this event loop, served by one database poll at a time on one thread."""

    def __init__(self, *, poll_seconds: float, batch: int = 2000) -> None:
        self.poll_seconds = poll_seconds
        self.batch = batch
        self.followers: set[Follower] = set()
        self._joined = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        # One thread, so the hub's one database connection lives there and polls never overlap.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="live-hub")

    def subscribe(self, task_id: Any, *, after: int, feed: str = LOGS) -> Follower:
        follower = Follower(task_id=task_id, after=after, feed=feed)
        self.followers.add(follower)
        self._joined.set()
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._run(), name="live-hub")
        return follower

    def unsubscribe(self, follower: Follower) -> None:
        self.followers.discard(follower)

    async def close(self) -> None:
        """Stop polling and give the connection back (a process's hub lives as long as the process; tests end
        theirs)."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await asyncio.get_running_loop().run_in_executor(self._executor, _close_connection)
        self._executor.shutdown()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.followers:
                # Idle: give the connection back, then sleep until someone follows again.
                await loop.run_in_executor(self._executor, _close_connection)
                while not self.followers:
                    self._joined.clear()
                    await self._joined.wait()
            self._joined.clear()
            views = [_View(f, f.task_id, f.run_id, f.after, f.feed) for f in self.followers]
            full = False
            try:
                updates, full = await loop.run_in_executor(self._executor, _poll, views, self.batch)
            except DatabaseError:
                # A restart or a dropped connection: the followers wait (keep-alives still flow) and the next poll
                # opens a new connection.
                logger.warning("live streams: database poll failed; retrying", exc_info=True)
                await loop.run_in_executor(self._executor, _close_connection)
            except Exception:
                # Never let one bad poll leave every follower of the process hanging.
                logger.exception("live streams: poll failed; retrying")
            else:
                self._deliver(updates)
            if full:
                continue
            with contextlib.suppress(TimeoutError):  # a new follower wakes the poll early, for its backlog
                await asyncio.wait_for(self._joined.wait(), self.poll_seconds)

    def _deliver(self, updates: list[tuple[Follower, _Update]]) -> None:
        for follower, update in updates:
            if follower not in self.followers:
                continue  # its client left while the poll ran
            follower.run_id, follower.after, follower.status = update.run_id, update.after, update.status
            if follower.queue.qsize() + len(update.events) > FOLLOWER_BACKLOG:
                logger.info("live streams: a client fell %d events behind; ending its stream", FOLLOWER_BACKLOG)
                update.events, update.finished = [], True
            for event in update.events:
                follower.queue.put_nowait(event)
            if update.finished:
                self.followers.discard(follower)
                follower.queue.put_nowait(None)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LiveHub] = weakref.WeakKeyDictionary()


def hub(poll_seconds: float) -> LiveHub:
    """The running event loop's hub (one per stream process; tests may run several loops)."""
    loop = asyncio.get_running_loop()
    if loop not in _hubs:
        _hubs[loop] = LiveHub(poll_seconds=poll_seconds)
    return _hubs[loop]


# --- one client's stream --------------------------------------------------------------------------------
async def event_stream(task_id: Any, *, after: int, slot: Slot, max_seconds: float, keepalive_seconds: float,
                       poll_seconds: float, feed: str = LOGS) -> AsyncIterator[bytes]:
    """The bytes of one follow stream; releases `slot` however it ends (done, timed out, or cancelled because the
    client went away)."""
    follower: Follower | None = None
    live = hub(poll_seconds)
    try:
        yield SSE_PREAMBLE
        follower = live.subscribe(task_id, after=after, feed=feed)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_seconds
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                yield sse_event(LogEvent("timeout", follower.status))
                return
            try:
                event = await asyncio.wait_for(follower.queue.get(), min(keepalive_seconds, remaining))
            except TimeoutError:
                if loop.time() < deadline:
                    yield SSE_KEEPALIVE
                continue
            # Whatever else is already waiting goes out in the same write.
            events = [event]
            while events[-1] is not None and not follower.queue.empty():
                events.append(follower.queue.get_nowait())
            payload = b"".join(sse_event(e) for e in events if e is not None)
            if payload:
                yield payload
            if events[-1] is None:
                return
    finally:
        if follower is not None:
            live.unsubscribe(follower)
        slot.release()
