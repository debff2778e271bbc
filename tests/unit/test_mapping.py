"""Declarative mappings (schemas/mappings/*.yaml, schemas/mapping.py)."""

from __future__ import annotations

import shutil
import textwrap
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from schemas.errors import ConfigError
from schemas.mapping import (
    Cast,
    Condition,
    Grain,
    OnInvalid,
    Owner,
    convert,
    flows_for_table,
    load_flow,
    load_mappings,
    map_key,
    ownership,
)

EXPECTED_FLOWS = {
    "erp_res_partner__customer": ("erp", "res_partner", "customer"),
    "crm_accounts__customer": ("crm", "accounts", "customer"),
    "crm_contacts__contact": ("crm", "contacts", "contact"),
    "erp_product_product__product": ("erp", "product_product", "product"),
    "crm_aos_products__product": ("crm", "aos_products", "product"),
    "erp_stock_quant__inventory": ("erp", "stock_quant", "inventory"),
    "erp_sale_order__sales_order": ("erp", "sale_order", "sales_order"),
    "crm_aos_quotes__sales_order": ("crm", "aos_quotes", "sales_order"),
    "erp_account_move__invoice": ("erp", "account_move", "invoice"),
}


@pytest.fixture(scope="module")
def flows() -> dict[str, Any]:
    return load_mappings()


# ------------------------------------------------------------------- packaged flows


def test_the_packaged_flows_load(flows: dict[str, Any]) -> None:
    assert {n: (f.system, f.table, f.target) for n, f in flows.items()} == EXPECTED_FLOWS


def test_field_ownership_follows_the_design(flows: dict[str, Any]) -> None:
    customer = ownership(flows, "customer")
    assert customer["customer_number"] is Owner.ERP
    assert customer["vat"] is Owner.ERP
    assert customer["industry"] is Owner.CRM
    assert customer["email"] is Owner.SHARED
    product = ownership(flows, "product")
    assert product["list_price"] is product["standard_price"] is Owner.ERP
    assert set(ownership(flows, "inventory").values()) == {Owner.ERP}
    assert set(ownership(flows, "invoice").values()) == {Owner.ERP}
    assert set(ownership(flows, "contact").values()) == {Owner.CRM}
    order = ownership(flows, "sales_order")
    assert order["quote_number"] is Owner.CRM
    assert order["order_number"] is Owner.ERP
    assert order["lines.quantity"] is Owner.SHARED


def test_only_accepted_quotes_are_orders(flows: dict[str, Any]) -> None:
    quotes = flows["crm_aos_quotes__sales_order"]
    assert [str(c) for c in quotes.filter] == ["stage in ('Closed Accepted',)"]
    assert quotes.lines is not None
    assert (quotes.lines.table, quotes.lines.parent) == ("aos_products_quotes", "parent_id")


def test_flow_properties(flows: dict[str, Any]) -> None:
    partner = flows["erp_res_partner__customer"]
    assert (partner.id_field, partner.other_id_field) == ("erp_id", "crm_id")
    assert partner.raw_topic == "erp.public.res_partner"
    assert partner.canonical_topic == "canonical.customer"
    assert partner.field("email") is not None
    assert partner.field("industry") is None
    stock = flows["erp_stock_quant__inventory"]
    assert (stock.grain, stock.entity_id, stock.crosswalk) == (
        Grain.LOCATION,
        "product_id",
        "product",
    )
    assert flows_for_table(flows, "crm", "accounts") == (flows["crm_accounts__customer"],)
    assert flows_for_table(flows, "erp", "nothing") == ()


def test_decimal_fields_round_to_the_schema_scale(flows: dict[str, Any]) -> None:
    price = flows["erp_product_product__product"].field("list_price")
    assert (price.scale, price.integer_digits, price.minimum) == (2, 16, Decimal(0))


def test_value_maps_are_keyed_like_source_values(flows: dict[str, Any]) -> None:
    state = flows["erp_sale_order__sales_order"].field("state")
    assert state.value_map["sale"] == "confirmed"
    assert state.value_map["cancel"] == "cancelled"


# --------------------------------------------------------------------- conversions


@pytest.mark.parametrize(
    ("cast", "raw", "expected"),
    [
        (Cast.STR, "x", "x"),
        (Cast.STR, 42, "42"),
        (Cast.STR, True, "true"),
        (Cast.STR, Decimal("1.50"), "1.50"),
        (Cast.STR, uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (Cast.INT, "17", 17),
        (Cast.INT, Decimal("3"), 3),
        (Cast.DECIMAL, Decimal("12.345"), Decimal("12.345")),
        (Cast.DECIMAL, 7, Decimal(7)),
        (Cast.DECIMAL, "0.10", Decimal("0.10")),
        (Cast.DECIMAL, 0.1, Decimal("0.1")),
        (Cast.BOOL, "t", True),
        (Cast.BOOL, "No", False),
        (Cast.BOOL, 1, True),
        (Cast.DATE, 19875, date(2024, 6, 1)),
        (Cast.DATE, "2024-06-01", date(2024, 6, 1)),
        (Cast.TIMESTAMP, "2024-03-01T09:00:00Z", datetime(2024, 3, 1, 9, tzinfo=UTC)),
        (Cast.TIMESTAMP, "2024-03-01T10:00:00+01:00", datetime(2024, 3, 1, 9, tzinfo=UTC)),
        (Cast.TIMESTAMP, 1_000_000, datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)),
        (Cast.TIMESTAMP, datetime(2024, 1, 1), datetime(2024, 1, 1, tzinfo=UTC)),
        (Cast.INT, None, None),
    ],
)
def test_convert(cast: Cast, raw: Any, expected: Any) -> None:
    assert convert(cast, raw) == expected


@pytest.mark.parametrize(
    ("cast", "raw"),
    [
        (Cast.INT, True),
        (Cast.INT, Decimal("1.5")),
        (Cast.INT, "x"),
        (Cast.DECIMAL, "NaN"),
        (Cast.DECIMAL, "abc"),
        (Cast.DECIMAL, False),
        (Cast.BOOL, "maybe"),
        (Cast.BOOL, 2),
        (Cast.DATE, datetime(2024, 1, 1)),
        (Cast.DATE, "01.06.2024"),
        (Cast.TIMESTAMP, "yesterday"),
        (Cast.STR, b"bytes"),
    ],
)
def test_convert_rejects(cast: Cast, raw: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        convert(cast, raw)


def test_map_key() -> None:
    assert map_key(True) == "true"
    assert map_key(Decimal("1.0")) == "1.0"
    assert map_key(3) == "3"


@pytest.mark.parametrize(
    ("condition", "row", "holds"),
    [
        (Condition("parent_id", "is_null", (True,)), {"parent_id": None}, True),
        (Condition("parent_id", "is_null", (True,)), {}, True),
        (Condition("parent_id", "is_null", (True,)), {"parent_id": 3}, False),
        (Condition("parent_id", "is_null", (False,)), {"parent_id": 3}, True),
        (Condition("deleted", "equals", (True,)), {"deleted": True}, True),
        (Condition("deleted", "not_equals", (True,)), {"deleted": True}, False),
        (Condition("stage", "in", ("A", "B")), {"stage": "B"}, True),
        (Condition("stage", "not_in", ("A", "B")), {"stage": "C"}, True),
    ],
)
def test_conditions(condition: Condition, row: dict[str, Any], holds: bool) -> None:
    assert condition.holds(row) is holds


# -------------------------------------------------------------------------- errors

GOOD = """\
source: {system: erp, table: res_partner, key: id}
target: customer
match_key: customer_number
fields:
  customer_number: {source: ref, cast: str, clean: upper, owner: erp, required: true}
  email: {source: email, cast: str, clean: email, owner: shared}
  country_code: {source: country_code, cast: str, clean: country, owner: shared}
  phone: {source: phone, cast: str, clean: phone, region: country_code, owner: shared}
"""


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_a_good_flow_loads(tmp_path: Path) -> None:
    flow = load_flow(_write(tmp_path, "erp_res_partner__customer", GOOD))
    assert [f.target for f in flow.fields] == ["customer_number", "email", "country_code", "phone"]
    # Optional fields of an entity with quarantined_fields are quarantined; required
    # ones dead-letter their record.
    assert [f.on_invalid for f in flow.fields] == [
        OnInvalid.DEAD_LETTER,
        OnInvalid.QUARANTINE,
        OnInvalid.QUARANTINE,
        OnInvalid.QUARANTINE,
    ]


def test_quarantine_needs_a_schema_that_can_say_so(tmp_path: Path) -> None:
    # Stock has no quarantined_fields: its fields dead-letter, and cannot choose otherwise.
    stock = """\
    source: {system: erp, table: stock_quant, key: id, entity_id: product_id}
    target: inventory
    crosswalk: product
    grain: location
    fields:
      location_id: {source: location_id, cast: str, required: true, owner: erp}
      on_hand: {source: quantity, cast: decimal, owner: erp}
    """
    flow = load_flow(_write(tmp_path, "erp_stock_quant__inventory", stock))
    assert {f.on_invalid for f in flow.fields} == {OnInvalid.DEAD_LETTER}
    quarantined = stock.replace(
        "cast: decimal, owner", "cast: decimal, on_invalid: quarantine, owner"
    )
    path = _write(tmp_path, "erp_stock_quant__inventory", quarantined)
    with pytest.raises(ConfigError, match="on_invalid quarantine needs a top-level field"):
        load_flow(path)


BAD = {
    "unknown cast": (
        GOOD.replace("cast: str, clean: email", "cast: text, clean: email"),
        "field email: unknown cast 'text'",
    ),
    "unknown entity": (
        GOOD.replace("target: customer", "target: lead"),
        "unknown target entity 'lead'",
    ),
    "field not in the schema": (
        GOOD + "  fax: {source: fax, cast: str, owner: shared}\n",
        "field fax: is not a field of the canonical customer schema",
    ),
    "duplicate target": (
        GOOD + "  email: {source: email2, cast: str, owner: shared}\n",
        "duplicate key 'email'",
    ),
    "metadata field": (
        GOOD + "  version: {source: xmin, cast: int, owner: erp}\n",
        "field version: is event metadata",
    ),
    "own id mapped": (
        GOOD + "  erp_id: {source: id, cast: str}\n",
        "field erp_id: is set from the source key",
    ),
    "cast does not fit the schema": (
        GOOD + "  active: {source: active, cast: str, owner: erp}\n",
        "field active: cast str does not fit the schema type boolean",
    ),
    "unknown clean rule": (
        GOOD.replace("clean: email", "clean: [trim, shout]"),
        "field email: unknown clean rule 'shout'",
    ),
    "owner missing": (
        GOOD.replace("clean: email, owner: shared", "clean: email"),
        "field email: owner must be one of erp, crm, shared",
    ),
    "both source and value": (
        GOOD + "  city: {source: city, value: Berlin, cast: str, owner: shared}\n",
        "field city: needs exactly one of 'source'",
    ),
    "unknown field key": (
        GOOD + "  city: {source: city, cast: str, owner: shared, trim: yes}\n",
        "field city: unknown field key(s) trim",
    ),
    "region not a country field": (
        GOOD.replace("region: country_code", "region: email"),
        "field phone: region 'email' must be a field of this flow with clean: country",
    ),
    "map value does not convert": (
        GOOD + "  active: {source: active, cast: bool, owner: erp, map: {x: perhaps}}\n",
        "field active: map value 'perhaps' does not convert with cast bool",
    ),
    "match key not mapped": (
        GOOD.replace("match_key: customer_number", "match_key: vat"),
        "match_key 'vat' is not a mapped field",
    ),
    "bad system": (
        GOOD.replace("system: erp", "system: sap"),
        "source system must be one of erp, crm",
    ),
    "bad filter": (
        GOOD + "filter:\n  parent_id: {missing: true}\n",
        "filter on 'parent_id' needs exactly one of",
    ),
    "unknown on_invalid": (
        GOOD.replace("clean: email, owner", "clean: email, on_invalid: ignore, owner"),
        "field email: on_invalid must be one of quarantine, dead_letter, keep",
    ),
    "a required field quarantined": (
        GOOD.replace("required: true", "required: true, on_invalid: quarantine"),
        "field customer_number: a required field cannot be left out",
    ),
    "keep on a number": (
        GOOD + "  active: {source: active, cast: bool, owner: erp, on_invalid: keep}\n",
        "field active: on_invalid keep applies to text",
    ),
    "region on a name": (
        GOOD
        + "  city: {source: city, cast: str, clean: trim, region: country_code, owner: shared}\n",
        "field city: region applies to phone and vat fields",
    ),
    "not a mapping": ("- a\n- b\n", "a flow file must be a mapping"),
    "invalid yaml": ("source: [unclosed\n", "not valid YAML"),
}


@pytest.mark.parametrize(("text", "message"), BAD.values(), ids=BAD.keys())
def test_config_errors_name_the_file_flow_and_field(
    tmp_path: Path, text: str, message: str | None
) -> None:
    path = _write(tmp_path, "erp_res_partner__customer", text)
    with pytest.raises(ConfigError) as raised:
        load_flow(path)
    assert str(path) in str(raised.value)
    if message is not None:
        assert message in str(raised.value)


def test_round_beyond_the_schema_scale_is_rejected(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "erp_product_product__product",
        """\
        source: {system: erp, table: product_product, key: id}
        target: product
        fields:
          list_price: {source: list_price, cast: decimal, round: 4, owner: erp}
        """,
    )
    with pytest.raises(ConfigError, match="field list_price: round 4 exceeds the schema's scale 2"):
        load_flow(path)


def test_flow_name_must_match_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "erp_res_partner__customer", "flow: other\n" + GOOD)
    with pytest.raises(ConfigError, match="flow name 'other' must match the file name"):
        load_flow(path)


def test_flows_of_one_entity_must_agree_on_owners(tmp_path: Path) -> None:
    _write(tmp_path, "erp_res_partner__customer", GOOD)
    _write(
        tmp_path,
        "crm_accounts__customer",
        """\
        source: {system: crm, table: accounts, key: id}
        target: customer
        fields:
          email: {source: email, cast: str, clean: email, owner: crm}
        """,
    )
    with pytest.raises(ConfigError) as raised:
        load_mappings(tmp_path)
    message = str(raised.value)
    assert "flow erp_res_partner__customer: field email: owner shared disagrees" in message
    assert "crm_accounts__customer (crm)" in message


def test_one_table_maps_to_an_entity_once(tmp_path: Path) -> None:
    _write(tmp_path, "erp_res_partner__customer", GOOD)
    _write(tmp_path, "erp_res_partner__customer_again", GOOD)
    with pytest.raises(ConfigError, match=r"maps erp\.res_partner to customer like flow"):
        load_mappings(tmp_path)


def test_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no mapping files"):
        load_mappings(tmp_path)


def test_lines_are_checked_against_the_item_record(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "erp_sale_order__sales_order",
        """\
        source: {system: erp, table: sale_order, key: id}
        target: sales_order
        fields:
          order_number: {source: name, cast: str, owner: erp}
        lines:
          source: {table: sale_order_line, key: id, parent: order_id}
          fields:
            colour: {source: colour, cast: str, owner: shared}
        """,
    )
    with pytest.raises(
        ConfigError, match="field colour: is not a field of the canonical sales_order lines"
    ):
        load_flow(path)


def test_adding_a_field_is_a_yaml_edit(tmp_path: Path) -> None:
    packaged = resources.files("schemas") / "mappings"
    for item in packaged.iterdir():
        if item.name.endswith(".yaml"):
            (tmp_path / item.name).write_text(item.read_text(encoding="utf-8"), encoding="utf-8")
    partner = tmp_path / "erp_res_partner__customer.yaml"
    partner.write_text(
        partner.read_text(encoding="utf-8")
        + "  industry: {source: comment, cast: str, clean: trim, owner: crm}\n",
        encoding="utf-8",
    )
    flows = load_mappings(tmp_path)
    industry = flows["erp_res_partner__customer"].field("industry")
    assert industry is not None
    assert industry.source == "comment"


def test_load_mappings_accepts_a_path_copy(tmp_path: Path) -> None:
    source = Path(str(resources.files("schemas") / "mappings"))
    target = tmp_path / "mappings"
    shutil.copytree(source, target)
    assert set(load_mappings(target)) == set(EXPECTED_FLOWS)
