"""A bare Faust worker for ``test_streams_recovery``: one table, one topic, a backlog.

Configured by the environment: ``BACKLOG_TOPIC``, ``BACKLOG_APP_ID``, ``BACKLOG_OUT`` (a
file that gets one line per record read: its offset), ``BACKLOG_DATA`` (the worker's
data directory), ``BACKLOG_SEEK_DELAY`` (seconds the lookup of the committed offsets
takes, as on a busy broker), ``BACKLOG_TABLE_MANAGER`` (``stock``: Faust's own; else
the streams worker's) and ``KAFKA_BOOTSTRAP``.

Run: ``python -m tests.integration.faust_backlog_app worker -l info``.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import Any

import faust
from faust.transport.drivers import aiokafka as driver

from streams.recovery import StreamsTableManager

_seek_to_committed = driver.Consumer.seek_to_committed


async def _slow_seek_to_committed(self: Any) -> Any:
    await asyncio.sleep(float(os.environ.get("BACKLOG_SEEK_DELAY", "0")))
    return await _seek_to_committed(self)


driver.Consumer.seek_to_committed = _slow_seek_to_committed

_stock = os.environ.get("BACKLOG_TABLE_MANAGER") == "stock"
app = faust.App(
    os.environ["BACKLOG_APP_ID"],
    broker=f"kafka://{os.environ['KAFKA_BOOTSTRAP']}",
    store="memory://",
    datadir=os.environ["BACKLOG_DATA"],
    topic_partitions=1,
    web_enabled=False,
    producer_acks=-1,
    broker_session_timeout=6,
    broker_heartbeat_interval=1,
    autodiscover=False,
    **({} if _stock else {"TableManager": StreamsTableManager}),
)
topic = app.topic(
    os.environ["BACKLOG_TOPIC"],
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
)
latest = app.Table("latest", partitions=1, key_type=str)


@app.agent(topic)
async def record(stream: Any) -> None:
    """Append each record's offset to the output file; keep a table busy, as the worker does."""
    with open(os.environ["BACKLOG_OUT"], "a", encoding="utf-8") as out:
        async for events in stream.take_events(500, within=0.01):
            token = faust.streams._current_event.set(weakref.ref(events[-1]))
            try:
                for event in events:
                    latest[f"k{event.message.offset % 1000}"] = event.message.offset
            finally:
                faust.streams._current_event.reset(token)
            out.write("".join(f"{event.message.offset}\n" for event in events))
            out.flush()
            await asyncio.sleep(0.1)  # slower than the fetcher: its buffer fills


if __name__ == "__main__":
    app.main()
