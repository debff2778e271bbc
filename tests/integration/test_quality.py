"""Known defects typed into both systems, followed field by field to the other system.

The whole line runs (both captures, the streams worker, both sinks). The test types, as
users do, records with the defects the cleansing must handle -- padded names, country
names, e-mail addresses in odd case, VAT ids spaced and in lower case, a phone with its
extension, a phone typo, an e-mail without an @, a VAT id whose check digit is wrong, a
record without a required field, a SKU in mixed case, stock oversold in one location --
and checks every outcome field by field:

* fixed as documented: the other system holds the cleansed value;
* quarantined: the field is not written (a new row has it empty, an existing row keeps
  what it had) while the rest of the record is synced;
* dead-lettered: the record is on ``dlq.streams`` with its reason, and nowhere else.

Nothing is lost (every record ends in one of those), nothing overstated (the stock
counts the negative quant; the data-quality log holds exactly the defects each record
had, once; ``erpcrm quality`` and the streams metric show the same figures).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql

from schemas.serde import AvroSerde, RegistryClient
from schemas.topics import CANONICAL_INVENTORY, QUALITY_TOPIC
from streams.dlq import DLQ_TOPIC
from streams.quality import QualityEntry, summarise
from tests.integration.cdc_fixtures import execute, unique_name, wait_for
from tests.integration.sink_fixtures import Pipeline, newest_records, watermarks

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SETTLE = 90.0
H_APP_ID = "erpcrm.app_id"


def _valid_vat(seed: str) -> tuple[str, str]:
    """A German VAT id whose check digit holds, typed spaced and in lower case."""
    from random import Random

    from stdnum.de import vat as de_vat

    rng = Random(seed)
    while True:
        digits = "".join(str(rng.randrange(10)) for _ in range(9))
        if digits[0] != "0" and de_vat.is_valid(digits):
            return f"de {digits[:3]} {digits[3:6]} {digits[6:]}", f"DE{digits}"


@dataclass
class Typed:
    """What the test typed, and the ids the systems gave it."""

    tag: str
    started_ms: int
    start: dict[tuple[str, int], int]
    erp: dict[str, int] = field(default_factory=dict)
    crm: dict[str, str] = field(default_factory=dict)
    vat_typed: str = ""
    vat: str = ""
    sku: str = ""
    locations: tuple[int, int] = (0, 0)


def _one(dsn: str, query: str, params: Any = None) -> Any:
    rows = execute(dsn, query, params)
    return rows[0][0] if rows else None


def _row(
    dsn: str, query: str | sql.Composable, params: Any, what: str, timeout: float = SETTLE
) -> tuple[Any, ...]:
    """The first row of ``query`` once there is one."""

    def first() -> tuple[Any, ...] | None:
        rows = execute(dsn, query, params)
        return rows[0] if rows else None

    found: tuple[Any, ...] = wait_for(first, timeout, what, interval=0.3)
    return found


def _until(dsn: str, query: str, params: Any, expected: Any, what: str) -> None:
    try:
        wait_for(lambda: _one(dsn, query, params) == expected, SETTLE, what, interval=0.3)
    except AssertionError:
        raise AssertionError(f"{what}: {_one(dsn, query, params)!r} != {expected!r}") from None


def _partner(env: dict[str, str], **columns: Any) -> int:
    names = list(columns)
    query = (
        f"INSERT INTO public.res_partner ({', '.join(names)}, is_company)"
        f" VALUES ({', '.join(['%s'] * len(names))}, true) RETURNING id"
    )
    return int(_one(env["ERP_DSN"], query, [columns[n] for n in names]))


def _account(env: dict[str, str], **columns: Any) -> str:
    names = list(columns)
    query = (
        f"INSERT INTO public.accounts ({', '.join(names)})"
        f" VALUES ({', '.join(['%s'] * len(names))}) RETURNING id::text"
    )
    return str(_one(env["CRM_DSN"], query, [columns[n] for n in names]))


def _messages(
    env: dict[str, str], topic: str, start: dict[tuple[str, int], int], app_id: str
) -> list[tuple[bytes | None, bytes, dict[str, str]]]:
    """Every message ``app_id`` published on ``topic`` since ``start``: key, value, headers."""
    consumer = Consumer(
        {"bootstrap.servers": env["KAFKA_BOOTSTRAP"], "group.id": unique_name("quality")}
    )
    ends = watermarks(env["KAFKA_BOOTSTRAP"], (topic,))
    assignment = [
        TopicPartition(t, p, start.get((t, p), 0)) for (t, p), end in ends.items() if end > 0
    ]
    found: list[tuple[bytes | None, bytes, dict[str, str]]] = []
    try:
        remaining = {
            (tp.topic, tp.partition)
            for tp in assignment
            if ends[(tp.topic, tp.partition)] > tp.offset
        }
        if not remaining:
            return found
        consumer.assign(assignment)
        while remaining:
            for message in consumer.consume(500, 2.0):
                assert message.error() is None, message.error()
                where = (str(message.topic()), int(message.partition() or 0))
                if int(message.offset() or 0) + 1 >= ends[where]:
                    remaining.discard(where)
                pairs: list[Any] = list(message.headers() or [])
                headers = {
                    str(k): v.decode("utf-8", errors="replace") if isinstance(v, bytes) else ""
                    for k, v in pairs
                }
                value = message.value()
                if value is not None and headers.get(H_APP_ID) == app_id:
                    found.append((message.key(), value, headers))
        return found
    finally:
        consumer.close()


ERP_TABLES = ("res_partner", "product_product", "stock_location", "stock_quant")
CRM_TABLES = ("accounts", "contacts", "aos_products")
"""The tables the defects are typed into (orders and invoices stay out: a long snapshot)."""


@pytest.fixture(scope="module")
def pipeline(
    stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    running = Pipeline(stack_env, tmp_path_factory.mktemp("quality"))
    running.erp.tables = ERP_TABLES
    running.crm.tables = CRM_TABLES
    try:
        running.start()
        running.settled(timeout=420)
        yield running
    finally:
        running.cleanup()


@pytest.fixture(scope="module")
def typed(pipeline: Pipeline, stack_env: dict[str, str]) -> Typed:
    env = stack_env
    tag = uuid.uuid4().hex[:8]
    start = watermarks(env["KAFKA_BOOTSTRAP"], (QUALITY_TOPIC, DLQ_TOPIC, CANONICAL_INVENTORY))
    t = Typed(tag, int(datetime.now(UTC).timestamp() * 1000), start)
    t.vat_typed, t.vat = _valid_vat(tag)

    # ERP customers.
    t.erp["fixed"] = _partner(
        env,
        name=f"  Qa   Fixed {tag}   GmbH ",
        ref=f"qa-{tag}-a",
        email=f" Buyer.{tag}@Example.COM ",
        phone="12",  # a typo: quarantined
        vat=t.vat_typed,
        country_code="Deutschland",
        city="Berlin",
    )
    t.erp["email"] = _partner(
        env,
        name=f"Qa Email {tag} GmbH",
        ref=f"qa-{tag}-b",
        email="not-an-email",  # quarantined
        phone="+49 30 1234567 ext. 89",  # kept with its extension
        country_code="DE",
    )
    t.erp["vat"] = _partner(
        env,
        name=f"Qa Vat {tag} SARL",
        ref=f"qa-{tag}-c",
        vat="FR2 194 564 397 8",  # wrong check digit: quarantined
        country_code="FR",
        email=f"vat.{tag}@example.fr",
    )
    t.erp["no_number"] = _partner(env, name=f"Qa Nonumber {tag} GmbH", ref=None, country_code="DE")
    t.erp["update"] = _partner(
        env,
        name=f"Qa Update {tag} GmbH",
        ref=f"qa-{tag}-d",
        phone="+49 30 5550000",
        country_code="DE",
        city="Berlin",
    )
    # CRM accounts and a contact.
    t.crm["account"] = _account(
        env,
        name=f"  Qa Crm {tag} ",
        email="kontakt(at)example.com",  # quarantined
        phone_office="030 7654321 x12",  # national, with an extension
        billing_address_country="Deutschland",
    )
    t.crm["blank"] = _account(env, name="   ", billing_address_country="DE")
    t.crm["contact"] = str(
        _one(
            env["CRM_DSN"],
            "INSERT INTO public.contacts (account_id, first_name, last_name, email, phone_mobile,"
            " primary_address_country) VALUES (%s, ' Ada ', %s, %s, 'abc', 'DE')"
            " RETURNING id::text",
            (t.crm["account"], f"Qa{tag}", f"ada.{tag}@example.com"),
        )
    )
    # A product with a mixed-case SKU, stocked in two locations, one of them oversold.
    t.sku = f"qa-Sku-{tag}"
    product = int(
        _one(
            env["ERP_DSN"],
            "INSERT INTO public.product_product (default_code, name, list_price)"
            " VALUES (%s, %s, 10) RETURNING id",
            (f" {t.sku} ", f"Qa product {tag}"),
        )
    )
    t.erp["product"] = product
    _row(
        env["CRM_ADMIN_DSN"],
        "SELECT id FROM public.aos_products WHERE part_number = %s",
        (t.sku,),
        "the product in the CRM",
    )
    first, second = (
        int(r[0])
        for r in execute(
            env["ERP_ADMIN_DSN"],
            "SELECT id FROM public.stock_location WHERE usage = 'internal' ORDER BY id LIMIT 2",
        )
    )
    t.locations = (first, second)
    execute(
        env["ERP_DSN"],
        "INSERT INTO public.stock_quant (product_id, location_id, quantity, reserved_quantity)"
        " VALUES (%s, %s, 10, 0), (%s, %s, -3, 0)",
        (product, first, product, second),
    )
    # The existing customer's update: a phone typo next to a good change.
    _until(
        env["CRM_ADMIN_DSN"],
        "SELECT phone_office FROM public.accounts WHERE name = %s AND NOT deleted",
        (f"Qa Update {tag} GmbH",),
        "+49305550000",
        "the customer to update in the CRM",
    )
    execute(
        env["ERP_DSN"],
        "UPDATE public.res_partner SET phone = 'n/a', city = 'Potsdam' WHERE id = %s",
        (t.erp["update"],),
    )
    _until(
        env["CRM_ADMIN_DSN"],
        "SELECT available FROM public.product_availability WHERE part_number = %s",
        (t.sku,),
        Decimal(7),
        "the stock counted with its negative quant",
    )
    # Oversold: more reserved than is on hand.
    execute(
        env["ERP_DSN"],
        "UPDATE public.stock_quant SET reserved_quantity = 9 WHERE product_id = %s"
        " AND location_id = %s",
        (product, first),
    )
    pipeline.settled(timeout=180)
    return t


# ------------------------------------------------------------------ field by field


def _crm_account(env: dict[str, str], name: str) -> dict[str, Any]:
    names = ("name", "account_number", "email", "phone_office", "vat", "country", "city")
    row = _row(
        env["CRM_ADMIN_DSN"],
        "SELECT name, account_number, email, phone_office, vat, billing_address_country,"
        " billing_address_city FROM public.accounts WHERE name = %s AND NOT deleted",
        (name,),
        f"the CRM account {name!r}",
    )
    return dict(zip(names, row, strict=True))


def _erp_partner(env: dict[str, str], column: str, crm_id: str) -> dict[str, Any]:
    names = ("name", "email", "phone", "mobile", "country_code")
    row = _row(
        env["ERP_ADMIN_DSN"],
        sql.SQL(
            "SELECT name, email, phone, mobile, country_code FROM public.res_partner WHERE {} = %s"
        ).format(sql.Identifier(column)),
        (crm_id,),
        f"the ERP partner of {column} {crm_id}",
    )
    return dict(zip(names, row, strict=True))


def test_erp_customers_reach_the_crm_fixed_with_invalid_fields_left_out(
    typed: Typed, stack_env: dict[str, str]
) -> None:
    tag = typed.tag
    assert _crm_account(stack_env, f"Qa Fixed {tag} GmbH") == {
        "name": f"Qa Fixed {tag} GmbH",  # whitespace fixed
        "account_number": f"qa-{tag}-a",  # as entered, not upper-cased
        "email": f"Buyer.{tag}@example.com",  # domain lower-cased
        "phone_office": None,  # "12": quarantined, the rest synced
        "vat": typed.vat,  # compacted and checked
        "country": "DE",  # from "Deutschland"
        "city": "Berlin",
    }
    assert _crm_account(stack_env, f"Qa Email {tag} GmbH") == {
        "name": f"Qa Email {tag} GmbH",
        "account_number": f"qa-{tag}-b",
        "email": None,  # "not-an-email": quarantined
        "phone_office": "+49301234567;ext=89",  # E.164 with the extension kept
        "vat": None,
        "country": "DE",
        "city": None,
    }
    vat_account = _crm_account(stack_env, f"Qa Vat {tag} SARL")
    assert (vat_account["vat"], vat_account["email"], vat_account["country"]) == (
        None,  # wrong check digit: quarantined
        f"vat.{tag}@example.fr",
        "FR",
    )


def test_an_invalid_update_leaves_the_target_value_and_the_rest_flows(
    typed: Typed, stack_env: dict[str, str]
) -> None:
    account = _crm_account(stack_env, f"Qa Update {typed.tag} GmbH")
    assert (account["city"], account["phone_office"]) == ("Potsdam", "+49305550000")


def test_crm_records_reach_the_erp_fixed_with_invalid_fields_left_out(
    typed: Typed, stack_env: dict[str, str]
) -> None:
    partner = _erp_partner(stack_env, "crm_account_id", typed.crm["account"])
    assert partner == {
        "name": f"Qa Crm {typed.tag}",
        "email": None,  # "kontakt(at)example.com": quarantined
        "phone": "+49307654321;ext=12",  # national number read in DE, extension kept
        "mobile": None,
        "country_code": "DE",
    }
    contact = _erp_partner(stack_env, "crm_contact_id", typed.crm["contact"])
    assert contact == {
        "name": f"Ada Qa{typed.tag}",
        "email": f"ada.{typed.tag}@example.com",
        "phone": None,
        "mobile": None,  # "abc": quarantined
        "country_code": "DE",
    }


def test_stock_counts_its_oversold_quant_and_says_so(
    typed: Typed, stack_env: dict[str, str]
) -> None:
    row = _row(
        stack_env["CRM_ADMIN_DSN"],
        "SELECT on_hand, reserved, available FROM public.product_availability"
        " WHERE part_number = %s AND reserved = 9",
        (typed.sku,),
        "the oversold stock in the CRM",
    )
    assert row == (Decimal(7), Decimal(9), Decimal(-2))  # never 10 on hand
    newest = newest_records(stack_env, typed.start, source="erp", topics=(CANONICAL_INVENTORY,))[
        ("inventory", f"erp:{typed.erp['product']}")
    ]
    assert (newest["sku"], newest["available"], newest["oversold"]) == (typed.sku, -2, True)
    assert sorted(loc["on_hand"] for loc in newest["locations"]) == [-3, 10]


def test_unusable_records_are_dead_lettered_with_a_reason_and_nothing_else(
    typed: Typed, pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    serde = AvroSerde(RegistryClient(stack_env["SCHEMA_REGISTRY_URL"]))
    letters = _messages(stack_env, DLQ_TOPIC, typed.start, pipeline.streams.app_id)
    by_row: dict[tuple[str, str], dict[str, str]] = {}
    for _key, value, headers in letters:
        row = serde.decode(value).get("after") or {}
        by_row[(headers.get("erpcrm.flow", ""), str(row.get("id")))] = headers
    no_number = by_row[("erp_res_partner__customer", str(typed.erp["no_number"]))]
    assert (no_number["erpcrm.error.reason"], no_number["erpcrm.error.field"]) == (
        "missing_required",
        "customer_number",
    )
    blank = by_row[("crm_accounts__customer", typed.crm["blank"])]
    assert (blank["erpcrm.error.reason"], blank["erpcrm.error.field"]) == (
        "missing_required",
        "name",
    )
    # Nothing else of the test was dead-lettered, and the rejected ones went nowhere.
    ours = {str(v) for v in typed.erp.values()} | set(typed.crm.values())
    assert {row for _flow, row in by_row if row in ours} == {
        str(typed.erp["no_number"]),
        typed.crm["blank"],
    }
    assert (
        _one(
            stack_env["CRM_ADMIN_DSN"],
            "SELECT count(*) FROM public.accounts WHERE name = %s",
            (f"Qa Nonumber {typed.tag} GmbH",),
        )
        == 0
    )


# ------------------------------------------------------------------ the quality log

EXPECTED = {
    "fixed": {
        ("name", "trim", "fixed"),
        ("email", "trim", "fixed"),
        ("email", "email", "fixed"),
        ("vat", "vat", "fixed"),
        ("country_code", "country", "fixed"),
        ("phone", "invalid_phone", "quarantined"),
    },
    "email": {
        ("email", "invalid_email", "quarantined"),
        ("phone", "phone", "fixed"),
    },
    "vat": {("vat", "invalid_vat", "quarantined")},
}


def _entries(typed: Typed, pipeline: Pipeline, env: dict[str, str]) -> list[QualityEntry]:
    return [
        QualityEntry.from_json(value, headers.get("erpcrm.output_id", ""))
        for _key, value, headers in _messages(
            env, QUALITY_TOPIC, typed.start, pipeline.streams.app_id
        )
    ]


def test_the_quality_log_holds_each_records_defects_once(
    typed: Typed, pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    entries = _entries(typed, pipeline, stack_env)
    by_key: dict[str, list[QualityEntry]] = {}
    for entry in entries:
        by_key.setdefault(entry.record, []).append(entry)
    for name, expected in EXPECTED.items():
        (entry,) = by_key[f"erp:{typed.erp[name]}"]  # one entry: one published change
        assert {(d.field, d.rule, d.outcome.value) for d in entry.defects} == expected, name
        phone = next((d for d in entry.defects if d.field == "phone"), None)
        if name == "fixed":
            assert phone is not None
            assert phone.value == "12"
    update = [
        d
        for e in by_key[f"erp:{typed.erp['update']}"]
        for d in e.defects
        if d.outcome.value != "fixed"  # its insert's phone was formatted
    ]
    assert [(d.field, d.rule, d.outcome.value, d.value) for d in update] == [
        ("phone", "invalid_phone", "quarantined", "n/a")
    ]
    account = {
        (d.field, d.rule, d.outcome.value)
        for e in by_key[f"crm:{typed.crm['account']}"]
        for d in e.defects
    }
    assert account >= {
        ("name", "trim", "fixed"),
        ("email", "invalid_email", "quarantined"),
        ("phone", "phone", "fixed"),
        ("country_code", "country", "fixed"),
    }
    contact = {
        (d.field, d.rule, d.outcome.value)
        for e in by_key[f"crm:{typed.crm['contact']}"]
        for d in e.defects
    }
    assert contact == {("first_name", "trim", "fixed"), ("phone", "invalid_phone", "quarantined")}
    dead = [e for e in entries if e.key is None and e.defects[0].outcome.value == "dead_lettered"]
    assert {(e.flow, e.defects[0].field) for e in dead} >= {
        ("erp_res_partner__customer", "customer_number"),
        ("crm_accounts__customer", "name"),
    }
    assert len({e.output_id for e in entries}) == len(entries)  # none logged twice


def test_the_report_and_the_metric_show_the_same_figures(
    typed: Typed, pipeline: Pipeline, stack_env: dict[str, str]
) -> None:
    # Everything this worker logged since it started (the snapshot too), against its counter.
    everything = [
        QualityEntry.from_json(value, headers.get("erpcrm.output_id", ""))
        for _key, value, headers in _messages(stack_env, QUALITY_TOPIC, {}, pipeline.streams.app_id)
    ]
    report = summarise(everything)
    logged = Counter({(f.entity, f.field, f.rule, f.outcome): f.defects for f in report.figures})
    counted = Counter(
        {
            (labels["entity"], labels["field"], labels["rule"], labels["outcome"]): int(value)
            for (name, pairs), value in pipeline.streams.metrics().items()
            if name == "erpcrm_streams_quality_defects_total"
            for labels in [dict(pairs)]
            if value
        }
    )
    assert logged == counted
    # The command line reads the same log.
    since = datetime.fromtimestamp(typed.started_ms / 1000, UTC).isoformat()
    shown = subprocess.run(
        [sys.executable, "-m", "erpcrm.cli", "quality", "--json", "--since", since],
        env={**os.environ, **stack_env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    data = json.loads(shown.stdout)
    figures = {(f["entity"], f["field"], f["rule"], f["outcome"]): f for f in data["figures"]}
    assert figures[("customer", "vat", "invalid_vat", "quarantined")]["defects"] >= 1
    assert figures[("customer", "email", "invalid_email", "quarantined")]["records"] >= 2
    assert data["outcomes"]["dead_lettered"] >= 2
    assert data["unreadable"] == 0
