"""`?follow=1` outside the stream process, content negotiation for SSE clients, the stream caps and the hub's poll."""

from __future__ import annotations

import asyncio
import gc
import uuid

import pytest
from rest_framework.test import APIClient

from tasks_app.models import EventSource, Task, TaskLogChunk, TaskRun, TaskStatus
from tasks_app.services.accounts import token_create, user_create
from tasks_app.streams import LiveHub, StreamSlots, _poll, _View, event_stream
from tasks_app.transitions import task_transition
from tests.factories import TaskFactory


def client_for(username: str, tenant: str = "acme") -> APIClient:
    user_create(username=username, tenant=tenant)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_create(username=username)[1]}")
    return client


def running_task(tenant: str = "acme", chunks: int = 0) -> tuple[Task, TaskRun]:
    task = TaskFactory(status=TaskStatus.RUNNING, tenant=tenant)
    run = TaskRun.objects.create(task=task, attempt=1, lease_token=uuid.uuid4())
    TaskLogChunk.objects.bulk_create(TaskLogChunk(run=run, seq=i, stream="stdout", data=f"{i}\n")
                                     for i in range(chunks))
    return task, run


# --- the WSGI web process ----------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_wsgi_process_never_streams_and_says_where_streams_are_served(settings) -> None:
    settings.SCHEDULER_STREAM_URL = ""
    task, _ = running_task()

    response = client_for("alice").get(f"/api/v1/tasks/{task.pk}/logs/?follow=1", HTTP_ACCEPT="text/event-stream")

    assert response.status_code == 421
    assert response["Content-Type"] == "application/json"
    assert "served by the stream process" in response.json()["detail"]
    assert "SCHEDULER_STREAM_URL" in response.json()["detail"]


@pytest.mark.django_db
def test_the_wsgi_process_redirects_follow_to_the_stream_url_with_the_same_path_and_query(settings) -> None:
    settings.SCHEDULER_STREAM_URL = "https://streams.example.com"
    task, _ = running_task()

    response = client_for("alice").get(f"/api/v1/tasks/{task.pk}/logs/?follow=1&after=3")

    assert response.status_code == 307
    assert response["Location"] == f"https://streams.example.com/api/v1/tasks/{task.pk}/logs/?follow=1&after=3"


@pytest.mark.django_db
def test_follow_of_another_tenants_task_is_404_before_any_redirect(settings) -> None:
    settings.SCHEDULER_STREAM_URL = "https://streams.example.com"
    task, _ = running_task("globex")

    response = client_for("alice").get(f"/api/v1/tasks/{task.pk}/logs/?follow=1")

    assert response.status_code == 404
    assert "Location" not in response


@pytest.mark.django_db
def test_event_stream_without_follow_is_a_clear_406_and_json_is_unchanged() -> None:
    task, _ = running_task(chunks=2)
    alice = client_for("alice")

    refused = alice.get(f"/api/v1/tasks/{task.pk}/logs/", HTTP_ACCEPT="text/event-stream")
    plain = alice.get(f"/api/v1/tasks/{task.pk}/logs/", HTTP_ACCEPT="application/json")

    assert refused.status_code == 406
    assert refused["Content-Type"] == "application/json"
    assert "follow=1" in refused.json()["detail"]
    assert plain.status_code == 200 and [c["data"] for c in plain.json()["chunks"]] == ["0\n", "1\n"]


@pytest.mark.django_db
def test_bad_after_on_follow_is_a_400_naming_the_field() -> None:
    task, _ = running_task()

    response = client_for("alice").get(f"/api/v1/tasks/{task.pk}/logs/?follow=1&after=-1")

    assert response.status_code == 400 and "after" in response.json()


# --- the caps ----------------------------------------------------------------------------------------------
def test_slots_count_per_token_and_in_all_and_release_once() -> None:
    slots = StreamSlots()
    a1 = slots.acquire("a", per_key_limit=2, total_limit=3)
    a2 = slots.acquire("a", per_key_limit=2, total_limit=3)

    assert "this token already has its maximum of 2" in slots.acquire("a", per_key_limit=2, total_limit=3)
    b1 = slots.acquire("b", per_key_limit=2, total_limit=3)
    assert "maximum of 3 live streams" in slots.acquire("c", per_key_limit=2, total_limit=3)

    a1.release()
    a1.release()  # a second release (the stream's end, then its collection) changes nothing
    assert (slots.total, slots.held("a"), slots.held("b")) == (2, 1, 1)
    assert not isinstance(slots.acquire("c", per_key_limit=2, total_limit=3), str)
    for slot in (a2, b1):
        slot.release()
    assert (slots.total, slots.held("a")) == (3 - 2, 0)


def test_a_stream_dropped_before_its_first_byte_gives_its_slot_back() -> None:
    # The client left while the response was being prepared: the server never iterates the stream.
    slots = StreamSlots()
    slot = slots.acquire("a", per_key_limit=1, total_limit=10)
    stream = slot.bind(event_stream("x", after=0, slot=slot, max_seconds=60, keepalive_seconds=15, poll_seconds=1))

    del stream
    gc.collect()

    assert slots.held("a") == 0 and slots.total == 0


# --- the hub -----------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_one_poll_for_any_number_of_followers_costs_two_queries(django_assert_num_queries) -> None:
    tasks = [running_task(chunks=3) for _ in range(5)]
    views = [_View(follower=object(), task_id=task.pk, run_id=None, after=i % 3)  # type: ignore[arg-type]
             for i in range(60) for task, _ in [tasks[i % 5]]]

    with django_assert_num_queries(2):
        updates, full = _poll(views, batch=2000)

    assert not full
    for (_, update), view in zip(updates, views, strict=True):
        assert [e.kind for e in update.events] == ["attempt"] + ["stdout"] * (3 - view.after)
        assert update.after == 3 and not update.finished


@pytest.mark.django_db
def test_a_retry_restarts_from_its_first_chunk_and_the_end_comes_after_the_last_chunk() -> None:
    task, first = running_task(chunks=2)
    view = _View(follower=object(), task_id=task.pk, run_id=first.pk, after=2)  # type: ignore[arg-type]
    second = TaskRun.objects.create(task=task, attempt=2, lease_token=uuid.uuid4())
    TaskLogChunk.objects.create(run=second, seq=0, stream="stderr", data="again\n")
    task_transition(task_id=task.pk, to=TaskStatus.FAILED, source=EventSource.WORKER, actor="test")

    [(_, update)], _ = _poll([view], batch=2000)

    assert [(e.kind, e.data) for e in update.events] == [("attempt", "2"), ("stderr", "again\n"), ("end", "failed")]
    assert update.finished


@pytest.mark.django_db(transaction=True)
def test_followers_of_one_task_all_get_every_event_in_order_and_late_joiners_their_backlog() -> None:
    task, run = running_task(chunks=2)

    async def scenario() -> list[list[tuple[str, str]]]:
        hub = LiveHub(poll_seconds=0.05)
        try:
            return await follow(hub)
        finally:
            await hub.close()

    async def follow(hub: LiveHub) -> list[list[tuple[str, str]]]:
        early = [hub.subscribe(task.pk, after=0) for _ in range(3)]
        seen = [[await f.queue.get() for _ in range(3)] for f in early]  # attempt + 2 chunks
        late = hub.subscribe(task.pk, after=1)
        seen.append([await late.queue.get() for _ in range(2)])  # attempt + chunk 1
        await asyncio.to_thread(TaskLogChunk.objects.create, run=run, seq=2, stream="stdout", data="2\n")
        await asyncio.to_thread(task_transition, task_id=task.pk, to=TaskStatus.SUCCEEDED, source=EventSource.WORKER,
                                actor="test")
        for follower, events in zip([*early, late], seen, strict=True):
            events.extend([await follower.queue.get(), await follower.queue.get(), await follower.queue.get()])
        assert hub.followers == set()
        return [[(e.kind, e.data) if e else ("closed", "") for e in events] for events in seen]

    seen = asyncio.run(asyncio.wait_for(scenario(), timeout=30))

    tail = [("stdout", "2\n"), ("end", "succeeded"), ("closed", "")]
    assert seen[:3] == [[("attempt", "1"), ("stdout", "0\n"), ("stdout", "1\n"), *tail]] * 3
    assert seen[3] == [("attempt", "1"), ("stdout", "1\n"), *tail]
