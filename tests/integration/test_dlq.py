"""``erpcrm dlq``: dead letters fixed at the source and replayed arrive exactly once.

On the real stack with both captures, the streams worker and both sinks running:

- a won CRM quote with a SKU the ERP catalogue does not have is dead-lettered by the
  streams stage; replayed while the SKU is still unknown it comes back with a replay
  count; once the product is created in the ERP, replaying it makes the order arrive in
  the ERP once, with one canonical event; replaying again changes nothing;
- a won quote of an account the ERP does not know is dead-lettered by the ERP sink;
  once the customer exists in the ERP, a replay by filter (stage, entity, time: the
  letters ``dlq list`` shows for the same filter) through ``replay.sinks.erp``, read
  only by that sink, creates the order once; ``replay --all`` with the filter then
  finds them all replayed already;
- every dead-letter topic keeps its letters without a time limit, whether a worker made
  it or found it made with the broker's default retention.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from erpcrm.dlq import DLQ_TOPICS
from schemas.dlq_topics import ensure_dead_letter_topic
from schemas.settings import KafkaSettings
from tests.integration.cdc_fixtures import execute, unique_name, wait_for
from tests.integration.operator_fixtures import (
    erpcrm_json,
    new_customer,
    new_product,
    operator_env,  # noqa: F401 - fixture env
    operator_pipeline,  # noqa: F401 - fixture pipeline
    under_sink_origin,
    won_quote,
)
from tests.integration.sink_fixtures import Pipeline
from tests.integration.test_streams import Output, OutputReader

pytestmark = pytest.mark.integration

WAIT = 90.0
QUOTE = "Replay test quote"


def dlq(env: dict[str, str], *args: str) -> Any:
    """``erpcrm dlq <args> --json``, its JSON output."""
    return erpcrm_json(env, "dlq", *args, "--json")


def _erp_orders(env: dict[str, str], quote: str) -> int:
    rows = execute(
        env["ERP_ADMIN_DSN"],
        "SELECT count(*) FROM public.sale_order WHERE crm_quote_id = %s",
        (quote,),
    )
    return int(rows[0][0])


def _letter_id(output: Output) -> str:
    return f"{output.topic}:{output.partition}:{output.offset}"


def test_an_order_with_an_unknown_sku_arrives_once_after_the_product_is_made_and_replayed(
    pipeline: Pipeline, env: dict[str, str]
) -> None:
    reader = OutputReader(env, pipeline.streams.app_id)
    try:
        unknown = f"ZZ-{uuid.uuid4().hex[:8].upper()}"
        _, account = new_customer(env)
        quote, _ = won_quote(
            env, account, [(unknown, Decimal("9.50"))], name=QUOTE, total=Decimal(10)
        )
        origin_key = f"crm:{quote}"

        def letters() -> list[Output]:
            reader.poll()
            return [
                o
                for o in reader.of("dlq.streams")
                if o.headers.get("erpcrm.error.reason") == "unknown_sku"
                and o.headers.get("erpcrm.context.order") == quote
            ]

        first = wait_for(letters, WAIT, "the order's dead letter")[0]
        assert "erpcrm.replay.count" not in first.headers
        first_id = _letter_id(first)

        listed = {
            line["id"]: line
            for line in dlq(env, "list", "--stage", "streams", "--reason", "unknown_sku")
        }
        assert listed[first_id]["entity"] == "sales_order"
        assert listed[first_id]["origin"].startswith(f"{pipeline.crm.prefix}.public.aos_quotes[")
        assert listed[first_id]["replayed"] is None
        shown = erpcrm_json(env, "dlq", "show", first_id)
        assert shown["key"] == {"id": quote}
        assert shown["value"]["after"]["id"] == quote
        assert shown["value"]["after"]["stage"] == "Closed Accepted"
        assert shown["headers"]["erpcrm.app_id"] == pipeline.streams.app_id

        # Replayed while the SKU is still unknown: it fails again, with its count.
        report = dlq(env, "replay", first_id)
        assert [r["id"] for r in report["replayed"]] == [first_id]
        assert report["replayed"][0]["to"] == f"{pipeline.streams.app_id}-control"

        def replayed_letters() -> list[Output]:
            return [o for o in letters() if o.headers.get("erpcrm.replay.count") == "1"]

        (second,) = wait_for(replayed_letters, WAIT, "the replay's dead letter")
        assert second.headers["erpcrm.origin.offset"] == first.headers["erpcrm.origin.offset"]
        assert _erp_orders(env, quote) == 0

        # The product is created at the source; the streams worker learns its SKU.
        execute(
            env["ERP_DSN"],
            "INSERT INTO public.product_product (default_code, name, list_price)"
            " VALUES (%s, 'Replay test part', 9.50)",
            (unknown,),
        )

        def product_known() -> bool:
            reader.poll()
            return any(
                o.value is not None and o.value.get("sku") == unknown
                for o in reader.of("canonical.product")
            )

        wait_for(product_known, WAIT, "the new product's canonical event")
        report = dlq(env, "replay", first_id, _letter_id(second))
        # The first was replayed already: only the second goes.
        assert [r["id"] for r in report["replayed"]] == [_letter_id(second)]
        assert report["already_replayed"] == [first_id]
        wait_for(lambda: _erp_orders(env, quote) == 1, WAIT, "the ERP order")
        lines = execute(
            env["ERP_ADMIN_DSN"],
            "SELECT p.default_code FROM public.sale_order_line l JOIN public.sale_order o "
            "ON o.id = l.order_id JOIN public.product_product p ON p.id = l.product_id "
            "WHERE o.crm_quote_id = %s ORDER BY l.sequence",
            (quote,),
        )
        assert [sku for (sku,) in lines] == [unknown]

        # Replayed once more on purpose: nothing new is published or applied.
        again = dlq(env, "replay", _letter_id(second), "--again")
        assert [r["replay_count"] for r in again["replayed"]] == [2]
        pipeline.settled(timeout=120)
        reader.poll()
        events = reader.of("canonical.sales_order", origin_key)
        assert len(events) == 1, [e.value for e in events]
        # the last replay succeeded: no letter with a second replay count
        counts = sorted(o.headers.get("erpcrm.replay.count", "0") for o in letters())
        assert counts[-1] == "1", counts
        assert _erp_orders(env, quote) == 1
        listed = {line["id"]: line for line in dlq(env, "list", "--stage", "streams")}
        assert listed[first_id]["replayed"]["replay_count"] == 1
        assert listed[_letter_id(second)]["replayed"]["replay_count"] == 2
    finally:
        reader.close()


def test_an_order_the_sink_refused_arrives_once_after_its_customer_is_made_and_replayed(
    pipeline: Pipeline, env: dict[str, str]
) -> None:
    started = datetime.now(UTC).isoformat()
    # An account the ERP never hears of: written under the sinks' replication origin,
    # which the CRM capture drops.
    name = f"Replay {uuid.uuid4().hex[:8]} AG"
    ((account,),) = under_sink_origin(
        env["CRM_ADMIN_DSN"],
        "INSERT INTO public.accounts (name, billing_address_country) VALUES (%s, 'DE')"
        " RETURNING id::text",
        (name,),
    )
    _, _, sku = new_product(env, "12.00")
    quote, _ = won_quote(env, account, [(sku, Decimal("12.00"))], name=QUOTE, total=Decimal(10))
    key = f"crm:{quote}"

    def letter() -> dict[str, Any] | None:
        found = [
            line
            for line in dlq(env, "list", "--stage", "sinks.erp", "--since", "10m")
            if line["entity_key"] == key
        ]
        return found[-1] if found else None

    refused = wait_for(letter, WAIT, "the ERP sink's dead letter", interval=2.0)
    assert refused["entity"] == "sales_order"
    assert refused["origin"].startswith("canonical.sales_order[")
    assert _erp_orders(env, quote) == 0

    # The customer is made in the ERP (an ordinary write, captured).
    execute(
        env["ERP_DSN"],
        "INSERT INTO public.res_partner (name, is_company, country_code, crm_account_id)"
        " VALUES (%s, true, 'DE', %s)",
        (name, account),
    )
    # Replayed by filter: exactly the letters the same filter lists.
    where = ("--stage", "sinks.erp", "--entity", "sales_order", "--since", started)
    listed = dlq(env, "list", *where)
    assert refused["id"] in {line["id"] for line in listed}
    assert {(line["stage"], line["entity"]) for line in listed} == {("sinks.erp", "sales_order")}
    assert refused["id"] not in {line["id"] for line in dlq(env, "list", "--entity", "customer")}
    report = dlq(env, "replay", *where)
    assert sorted(r["id"] for r in report["replayed"]) == sorted(line["id"] for line in listed)
    assert {r["to"] for r in report["replayed"]} == {"replay.sinks.erp"}
    wait_for(lambda: _erp_orders(env, quote) == 1, WAIT, "the ERP order")
    pipeline.settled(timeout=120)
    assert _erp_orders(env, quote) == 1
    again = dlq(env, "replay", "--all", "--stage", "sinks.erp", "--since", started)
    assert again["replayed"] == []
    assert refused["id"] in again["already_replayed"]


def _retention(env: dict[str, str], topics: list[str]) -> dict[str, str | None]:
    admin = AdminClient({"bootstrap.servers": env["KAFKA_BOOTSTRAP"]})
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in topics]
    found = {}
    for resource, future in admin.describe_configs(resources).items():
        found[resource.name] = future.result(timeout=30)["retention.ms"].value
    return found


def test_dead_letter_topics_keep_their_letters_without_a_time_limit(
    pipeline: Pipeline, env: dict[str, str]
) -> None:
    # The workers of this module's pipeline made (or set) their dead-letter topics.
    wait_for(
        lambda: set(_retention(env, list(DLQ_TOPICS)).values()) == {"-1"},
        WAIT,
        "unlimited retention on every dead-letter topic",
    )
    # Made fresh, and found made with a retention of one hour.
    fresh, limited = unique_name("dlq.t"), unique_name("dlq.t")
    admin = AdminClient({"bootstrap.servers": env["KAFKA_BOOTSTRAP"]})
    made = admin.create_topics([NewTopic(limited, 1, config={"retention.ms": "3600000"})])
    made[limited].result(timeout=30)
    try:
        assert _retention(env, [limited]) == {limited: "3600000"}
        kafka = KafkaSettings(bootstrap=env["KAFKA_BOOTSTRAP"])
        for topic in (fresh, limited):
            ensure_dead_letter_topic(kafka, topic)
        assert _retention(env, [fresh, limited]) == {fresh: "-1", limited: "-1"}
    finally:
        for future in admin.delete_topics([fresh, limited]).values():
            future.result(timeout=30)
