"""``reconcile --repair``: one re-snapshot signal per table, keys named by column."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from erpcrm.drift import Reread
from erpcrm.repair import request_rereads


def test_each_table_gets_one_signal_with_its_keys_on_its_systems_database() -> None:
    calls: list[tuple[str, str, Any]] = []
    opened: list[str] = []

    @contextlib.contextmanager
    def connect(dsn: str, **_: Any) -> Iterator[str]:
        opened.append(dsn)
        yield dsn

    def request(conn: str, table: str, *, keys: Any) -> str:
        calls.append((conn, table, keys))
        return f"signal-{len(calls)}"

    rereads = [
        Reread("crm", "public.aos_quotes", ("9f1c",)),
        Reread("erp", "public.stock_quant", ("7", "12"), "id"),
    ]
    done = request_rereads(
        {"erp": "erp-dsn", "crm": "crm-dsn"}, rereads, request=request, connect=connect
    )
    assert calls == [
        ("crm-dsn", "public.aos_quotes", [{"id": "9f1c"}]),
        ("erp-dsn", "public.stock_quant", [{"id": "7"}, {"id": "12"}]),
    ]
    assert [d.signal_id for d in done] == ["signal-1", "signal-2"]
    assert request_rereads({}, [], request=request, connect=connect) == []
