"""Dirty data through the whole line: workload -> captures -> streams worker -> outputs.

The workload generator writes a bounded, seeded run with 10 % dirty operations into the
demo ERP and CRM. Two captures (own slots and topic prefixes) and one streams worker
(own app id, data directory and port) carry it. Then, for every change the workload made
to a customer, contact or product row (every raw event of those tables that is not a
snapshot read), the test demands one of:

* a canonical event of that entity at that change's LSN whose fields are the cleansed
  source values (E.164 phone ending in the typed digits, e-mail with a lower-case domain
  made of the typed address, ISO country, trimmed text, identifiers as entered, VAT ids
  compacted, upper-case postcodes), or null and named in ``quarantined_fields`` where
  the typed value was invalid;
* a record in ``dlq.streams`` whose origin headers name that raw event and which says
  why (``erpcrm.error.reason``, ``erpcrm.error.class``);
* a no-op: the cleansed change equals the entity's last canonical event (the same field
  checks pass against that event).

Nothing else is allowed: nothing is silently lost. The dirty changes (found by looking
at the raw values: stray whitespace, badly formatted phone numbers, invalid or
upper-case e-mail addresses, missing country) must be among them in numbers, and the
worker's counters must balance: per plain-entity flow, events in = canonical out +
dead-lettered + deduped + no-ops + skipped, and every canonical event and dead letter
the counters report is on the topics.
"""

from __future__ import annotations

import math
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition

from erpcrm.workload import run_workload
from tests.integration.cdc_fixtures import Capture, Event, TopicReader, execute, wait_for
from tests.integration.test_streams import (
    CRM_TABLES,
    ERP_TABLES,
    Output,
    OutputReader,
    StreamsProcess,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SEED = 20261127
OPERATIONS = 400
DIRTY_RATIO = 0.1

H_REASON = "erpcrm.error.reason"
H_CLASS = "erpcrm.error.class"
H_FLOW = "erpcrm.flow"
H_ORIGIN = ("erpcrm.origin.topic", "erpcrm.origin.partition", "erpcrm.origin.offset")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass(frozen=True)
class Source:
    """How one source table's columns become canonical fields, for checking."""

    system: str
    entity: str
    flow: str
    key: str
    trim: Mapping[str, str]
    upper: Mapping[str, str]
    idents: Mapping[str, str]
    """Identifiers: carried as entered, trimmed."""
    email: str | None = None
    phones: Mapping[str, str] | None = None
    country: str | None = None


SOURCES: dict[str, Source] = {
    "res_partner": Source(
        "erp",
        "customer",
        "erp_res_partner__customer",
        "id",
        {"name": "name", "street": "street", "city": "city", "website": "website"},
        {"zip": "zip"},
        {"ref": "customer_number"},
        "email",
        {"phone": "phone"},
        "country_code",
    ),
    "accounts": Source(
        "crm",
        "customer",
        "crm_accounts__customer",
        "id",
        {
            "name": "name",
            "billing_address_street": "street",
            "billing_address_city": "city",
            "website": "website",
            "industry": "industry",
        },
        {"billing_address_postalcode": "zip"},
        {"account_number": "customer_number"},
        "email",
        {"phone_office": "phone"},
        "billing_address_country",
    ),
    "contacts": Source(
        "crm",
        "contact",
        "crm_contacts__contact",
        "id",
        {"first_name": "first_name", "last_name": "last_name", "title": "title"},
        {},
        {},
        "email",
        {"phone_mobile": "phone", "phone_work": "phone_work"},
        "primary_address_country",
    ),
    "product_product": Source(
        "erp",
        "product",
        "erp_product_product__product",
        "id",
        {"name": "name", "barcode": "barcode", "categ": "category", "uom": "uom"},
        {},
        {"default_code": "sku"},
    ),
    "aos_products": Source(
        "crm",
        "product",
        "crm_aos_products__product",
        "id",
        {"name": "name", "category": "category"},
        {"currency_id": "currency"},
        {"part_number": "sku"},
    ),
}
PLAIN_FLOWS = (
    *(s.flow for s in SOURCES.values()),
    "erp_account_move__invoice",
    "erp_stock_quant__inventory",
)

_E164 = re.compile(r"^\+[1-9]\d{6,14}(?:;ext=\d+)?$")
_VAT_NOISE = re.compile(r"[\s.\-/:,]")
_CLEAN_PHONE = re.compile(r"^\+\d{1,3}(?: \d+)+$")
_CLEAN_EMAIL = re.compile(r"^[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}$")
_CANONICAL_EMAIL = re.compile(r"^[^@\s<>,]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}$")
_EXTENSION = re.compile(r"\s*(?:ext\.?|x)\s*\d+$", re.IGNORECASE)


# ------------------------------------------------------------------ value checks


def _trimmed(value: str | None) -> str | None:
    if value is None:
        return None
    return " ".join(unicodedata.normalize("NFC", value).split()) or None


def dirt(source: Source, row: Mapping[str, Any]) -> list[str]:
    """What is visibly dirty about a raw row (by its own values, not the worker's)."""
    found = []
    for column in (
        *source.trim,
        *source.upper,
        *source.idents,
        source.email,
        *(source.phones or {}),
    ):
        value = row.get(column) if column else None
        if isinstance(value, str) and value != " ".join(value.split()):
            found.append(f"padding:{column}")
    if source.email and row.get(source.email) and not _CLEAN_EMAIL.match(row[source.email]):
        found.append("email")
    for column in source.phones or {}:
        if row.get(column) and not _CLEAN_PHONE.match(row[column]):
            found.append(f"phone:{column}")
    if source.entity == "customer" and source.country and not _trimmed(row.get(source.country)):
        found.append("missing_country")
    return found


def _number_digits(typed: str, phone: str) -> str:
    """The digits typed for the number itself: without the extension the phone kept."""
    digits = _phone_digits(typed)
    _, _, extension = phone.partition(";ext=")
    if extension and digits.endswith(extension):
        return digits[: -len(extension)]
    return digits


def _phone_digits(typed: str) -> str:
    """The digits a cleansed number must end with: no extension, no 00/0 prefix."""
    return re.sub(r"\D", "", _EXTENSION.sub("", typed.strip())).lstrip("0")


def mismatches(source: Source, row: Mapping[str, Any], record: Mapping[str, Any]) -> list[str]:
    """How ``record`` (canonical) fails to be the cleansed form of ``row`` (raw)."""
    if record.get("op") == "delete":
        return []
    bad = []
    left_out = set(record.get("quarantined_fields") or ())
    for name in left_out:
        if record.get(name) is not None:
            bad.append(f"{name}={record[name]!r} is quarantined, yet has a value")
    for column, name in (*source.trim.items(), *source.idents.items()):
        if name in record and record[name] != _trimmed(row.get(column)):
            bad.append(f"{name}={record[name]!r} from {row.get(column)!r}")
    typed_vat = _trimmed(row.get("vat")) if "vat" in record else None
    if typed_vat is not None and "vat" not in left_out:
        compact = _VAT_NOISE.sub("", typed_vat).upper()
        if not str(record["vat"]).endswith(compact[2:] if compact[:2].isalpha() else compact):
            bad.append(f"vat={record['vat']!r} from {typed_vat!r}")
    for column, name in source.upper.items():
        expected = _trimmed(row.get(column))
        expected = expected.upper() if expected else expected
        if name in record and record[name] != expected:
            bad.append(f"{name}={record[name]!r} from {row.get(column)!r}")
    if source.email:
        typed, email = str(row.get(source.email) or ""), record.get("email")
        if _trimmed(typed) is None:
            if email is not None:
                bad.append(f"email={email!r} from nothing")
        elif "email" in left_out:
            pass  # invalid as typed: left out, the target keeps what it has
        elif email is None or not _CANONICAL_EMAIL.match(email):
            bad.append(f"email={email!r} from {typed!r}")
        else:
            local, _, domain = email.rpartition("@")
            if local.lower() not in typed.lower() or domain not in typed.lower():
                bad.append(f"email={email!r} is not made of {typed!r}")
    for column, name in (source.phones or {}).items():
        typed, phone = str(row.get(column) or ""), record.get(name)
        if _trimmed(typed) is None:
            if phone is not None:
                bad.append(f"{name}={phone!r} from nothing")
        elif name in left_out:
            pass
        elif phone is None or not _E164.match(phone):
            bad.append(f"{name}={phone!r} from {typed!r}")
        elif not phone[1:].split(";")[0].endswith(_number_digits(typed, phone)):
            bad.append(f"{name}={phone!r} does not end in the digits of {typed!r}")
    if source.country:
        wanted, country = _trimmed(row.get(source.country)), record.get("country_code")
        if country is not None and not re.fullmatch(r"[A-Z]{2}", country):
            bad.append(f"country_code={country!r} is no ISO code")
        elif wanted is not None and len(wanted) == 2 and country != wanted.upper():
            bad.append(f"country_code={country!r} from {wanted!r}")
        elif wanted is not None and country is None and "country_code" not in left_out:
            bad.append(f"country_code=None from {wanted!r}")
        elif (
            wanted is None
            and source.entity == "customer"
            and country is None
            and (record.get("phone") or record.get("vat"))
        ):
            bad.append("country_code not inferred from the phone or VAT id")
    return bad


# ------------------------------------------------------------------ the run


def _metrics(streams: StreamsProcess) -> Samples:
    try:
        return streams.metrics()
    except httpx.HTTPError:
        return {}


def _total(samples: Samples, name: str, **only: str) -> float:
    wanted = set(only.items())
    return sum(v for (n, labels), v in samples.items() if n == name and wanted <= labels)


def _raw_message_count(env: dict[str, str], topics: list[str]) -> int:
    consumer = Consumer({"bootstrap.servers": env["KAFKA_BOOTSTRAP"], "group.id": "unused"})
    try:
        metadata = consumer.list_topics(timeout=10)
        total = 0
        for topic in topics:
            described = metadata.topics.get(topic)
            if described is None or described.error is not None:
                continue
            for partition in described.partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                total += int(high) - int(low)
        return total
    finally:
        consumer.close()


def _wait_confirmed(capture: Capture, timeout: float = 60.0) -> None:
    """Wait until the capture has everything written so far in Kafka."""
    (lsn,) = execute(capture.admin_dsn, "select (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")[0]
    wait_for(
        lambda: capture.metric("erpcrm_cdc_confirmed_lsn") >= int(lsn),
        timeout,
        f"capture {capture.slot} to confirm {lsn}",
        interval=0.2,
    )


@dataclass
class Run:
    erp: Capture
    crm: Capture
    streams: StreamsProcess
    reader: OutputReader
    samples: Samples
    raw: list[Event]
    workload: dict[str, Any]


@pytest.fixture(scope="module")
def run(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    log_dir: Path = tmp_path_factory.mktemp("streams-dirty")
    # Parked records (a contact of an account not seen yet) give up after 5 s, not 15.
    env = dict(stack_env, ERPCRM_STREAMS_REFERENCE_WAIT_SECONDS="5")
    erp = Capture(env, "erp", ERP_TABLES, log_dir)
    crm = Capture(env, "crm", CRM_TABLES, log_dir)
    streams = StreamsProcess(env, {"erp": erp.prefix, "crm": crm.prefix}, log_dir)
    reader = OutputReader(env, streams.app_id)
    try:
        erp.start()
        crm.start()
        erp.wait_streaming(120)
        crm.wait_streaming(120)
        streams.start().wait_ready()
        report = run_workload(
            env["ERP_DSN"],
            env["CRM_DSN"],
            rate=math.inf,
            duration=None,
            count=OPERATIONS,
            dirty_ratio=DIRTY_RATIO,
            seed=SEED,
        )
        # A failed operation rolls back and leaves nothing to check. On databases that
        # already ran this seed, a generated duplicate can meet its twin (a unique
        # violation, rolled back and counted); nothing else may fail.
        errors = {error for kinds in report.failed.values() for error in kinds}
        assert errors <= {"UniqueViolation"}, report.failed
        assert report.committed >= 0.95 * OPERATIONS, report.failed
        _wait_confirmed(erp)
        _wait_confirmed(crm)
        raw_topics = erp.topics + crm.topics
        raw_messages = _raw_message_count(env, raw_topics)
        state = {"last": -1.0, "since": time.monotonic()}

        def drained() -> Samples | None:
            if not streams.running:
                raise AssertionError(f"streams exited:\n{streams.tail()}")
            samples = _metrics(streams)
            done = _total(samples, "erpcrm_streams_consumed_total", kind="change")
            processed = _total(samples, "erpcrm_streams_events_in_total")
            if processed != state["last"]:
                state["last"], state["since"] = processed, time.monotonic()
            pending = _total(samples, "erpcrm_streams_pending")
            settled = time.monotonic() - state["since"] >= 2.0
            return samples if done >= raw_messages and pending == 0 and settled else None

        samples: Samples = wait_for(drained, 150, "the worker to drain the run", interval=0.3)
        out = _total(samples, "erpcrm_streams_events_out_total")
        letters = _total(samples, "erpcrm_streams_dead_letters_total")

        def all_read() -> bool:
            published = [o for o in reader.outputs if o.topic != "dlq.streams"]
            return len(published) >= out and len(reader.of("dlq.streams")) >= letters

        reader.wait(all_read, 60, "every output the counters report")
        time.sleep(1)
        reader.poll()
        tables = [erp.topic(t) for t in ERP_TABLES if t in SOURCES] + [
            crm.topic(t) for t in CRM_TABLES if t in SOURCES
        ]
        with TopicReader(env, tables) as raw:
            expected = _raw_message_count(env, tables)
            raw.wait(lambda events: len(events) >= expected, 60, "the raw customer events")
            events = list(raw.events)
        yield Run(erp, crm, streams, reader, samples, events, report.as_dict())
    finally:
        streams.cleanup()
        reader.close()
        erp.cleanup()
        crm.cleanup()


# ------------------------------------------------------------------ the tests


def _origin(event: Event) -> tuple[str, str, str]:
    return (event.topic, str(event.partition), str(event.offset))


def _classify(run: Run) -> tuple[Counter[str], list[str], Counter[str]]:
    """Every workload change of the checked tables: what became of it, and failures."""
    letters = {
        tuple(o.headers.get(h, "") for h in H_ORIGIN): o for o in run.reader.of("dlq.streams")
    }
    canonical: dict[str, list[Output]] = {}
    for output in run.reader.outputs:
        if output.topic.startswith("canonical.") and output.key is not None:
            canonical.setdefault(output.entity_key, []).append(output)
    outcomes: Counter[str] = Counter()
    dirty_outcomes: Counter[str] = Counter()
    failures: list[str] = []
    for event in run.raw:
        if event.value is None or event.op == "r":
            continue  # tombstones; snapshot reads (rows from before this run)
        table = event.topic.rsplit(".", 1)[1]
        source = SOURCES[table]
        row = event.row
        key = f"{source.system}:{row[source.key]}"
        lsn = event.source["lsn"]
        dirty = dirt(source, row)
        what = f"{table} {row[source.key]} at {lsn} ({event.op}, dirt {dirty})"
        mine = [
            o
            for o in canonical.get(key, [])
            if o.topic == f"canonical.{source.entity}" and o.value is not None
        ]
        at_lsn = [o for o in mine if o.value and o.value["source_lsn"] == lsn]
        letter = letters.get(_origin(event))
        if table == "res_partner" and row.get("parent_id") is not None:
            outcome = "filtered"
        elif at_lsn:
            outcome = "published"
            assert at_lsn[0].value is not None
            bad = mismatches(source, row, at_lsn[0].value)
            if bad:
                failures.append(f"{what}: published but not cleansed: {bad}")
        elif letter is not None:
            outcome = "dead_lettered"
            if not letter.headers.get(H_REASON) or not letter.headers.get(H_CLASS):
                failures.append(f"{what}: dead letter without a reason: {letter.headers}")
            if letter.headers.get(H_FLOW) != source.flow:
                failures.append(f"{what}: dead letter of flow {letter.headers.get(H_FLOW)}")
        else:
            earlier = [o for o in mine if o.value and o.value["source_lsn"] < lsn]
            if not earlier:
                failures.append(f"{what}: neither published nor dead-lettered: lost")
                continue
            outcome = "no_op"
            previous = max(earlier, key=lambda o: (o.value or {})["source_lsn"])
            assert previous.value is not None
            bad = mismatches(source, row, previous.value)
            if bad:
                failures.append(f"{what}: dropped, yet differs from the last event: {bad}")
        if outcome == "published" and at_lsn[0].value and at_lsn[0].value["quarantined_fields"]:
            outcome = "quarantined"  # published, with invalid fields left out
        outcomes[outcome] += 1
        if dirty:
            dirty_outcomes[outcome] += 1
            if outcome == "dead_lettered" and letter is not None:
                dirty_outcomes[f"reason:{letter.headers.get(H_REASON)}"] += 1
    return outcomes, failures, dirty_outcomes


def test_every_dirty_change_is_fixed_or_dead_lettered(run: Run) -> None:
    outcomes, failures, dirty = _classify(run)
    summary = f"outcomes {dict(outcomes)}, dirty {dict(dirty)}, workload {run.workload}"
    print(summary)  # shown with -s: what became of the run's changes
    assert failures == [], "\n".join([summary, *failures[:40]])
    assert outcomes["published"] >= 100, summary
    # The seeded run carries dirt of every person kind: enough of it must have come by.
    dirty_total = sum(n for k, n in dirty.items() if not k.startswith("reason:"))
    assert dirty_total >= 10, summary
    assert dirty["published"] + dirty["quarantined"] >= 5, summary  # fixed, or left out
    assert run.workload["dirty"] >= 20, summary


def test_the_counters_balance(run: Run) -> None:
    samples = run.samples
    letters = Counter(o.headers.get(H_FLOW, "") for o in run.reader.of("dlq.streams"))
    unbalanced = {}
    for flow in PLAIN_FLOWS:
        counts = {
            name: _total(samples, f"erpcrm_streams_{name}_total", flow=flow)
            for name in ("events_in", "events_out", "deduped", "no_ops", "skipped")
        }
        counts["dead_lettered"] = letters[flow]
        accounted = sum(v for k, v in counts.items() if k != "events_in")
        if counts["events_in"] != accounted or counts["events_in"] == 0:
            unbalanced[flow] = counts
    assert unbalanced == {}
    published = Counter(
        o.headers.get(H_FLOW) or o.topic for o in run.reader.outputs if o.topic != "dlq.streams"
    )
    assert len([o for o in run.reader.outputs if o.topic != "dlq.streams"]) == _total(
        samples, "erpcrm_streams_events_out_total"
    ), published
    assert len(run.reader.of("dlq.streams")) == _total(samples, "erpcrm_streams_dead_letters_total")
    reasons = Counter(o.headers.get(H_REASON) for o in run.reader.of("dlq.streams"))
    for reason, n in reasons.items():
        assert _total(samples, "erpcrm_streams_dead_letters_total", reason=str(reason)) == n
