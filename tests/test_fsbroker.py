"""The embedded broker (scheduler_site/fsbroker.py): a consumer never sees a message before it is whole."""

from __future__ import annotations

import threading
from pathlib import Path
from queue import Empty

from kombu import Connection

from scheduler_site.fsbroker import Transport

TRANSPORT = Transport  # (kombu.transport.filesystem.Transport fails this test: it writes the file in place)


def test_a_consumer_racing_the_producer_only_ever_reads_whole_messages(tmp_path: Path) -> None:
    folder = tmp_path / "queue"
    folder.mkdir()
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "store_processed": False}
    sent, received, errors = 400, [], []
    body = {"padding": "x" * 200_000}  # large enough that a write is not one instant

    def produce() -> None:
        with Connection(transport=TRANSPORT, transport_options=options) as conn:
            channel = conn.default_channel
            for i in range(sent):
                channel._put("q", {**body, "i": i})

    def consume() -> None:
        with Connection(transport=TRANSPORT, transport_options=options) as conn:
            channel = conn.default_channel
            while len(received) < sent and not errors:
                try:
                    received.append(channel._get("q")["i"])
                except Empty:
                    continue
                except ValueError as exc:  # a message read before it was whole
                    errors.append(exc)

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert sorted(received) == list(range(sent))
    assert list(folder.iterdir()) == []
