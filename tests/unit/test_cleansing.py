"""Cleansing rules (streams/cleansing.py), including against the workload's own dirt."""

from __future__ import annotations

import random

import phonenumbers
import pycountry
import pytest
from hypothesis import given
from hypothesis import strategies as st

from erpcrm import dirty
from streams.cleansing import (
    apply_default,
    clean_country,
    clean_email,
    clean_lower,
    clean_phone,
    clean_text,
    clean_upper,
    clean_vat,
    country_lookup,
    infer_country,
)
from streams.validation import Failed, Ok, Reason

# --------------------------------------------------------------------------- text


@pytest.mark.parametrize(
    ("raw", "clean", "notes"),
    [
        ("Acme GmbH", "Acme GmbH", []),
        ("  Acme GmbH", "Acme GmbH", ["trimmed whitespace"]),
        ("Acme GmbH\t", "Acme GmbH", ["trimmed whitespace"]),
        ("\u00a0Acme GmbH", "Acme GmbH", ["trimmed whitespace"]),
        ("Acme  GmbH", "Acme GmbH", ["collapsed whitespace"]),
        ("Acme\u200b GmbH", "Acme GmbH", ["removed zero-width characters"]),
        ("Mu\u0308ller", "Müller", ["normalised Unicode to NFC"]),
        ("   ", None, ["trimmed whitespace"]),
        ("", None, []),
    ],
)
def test_clean_text(raw: str, clean: str | None, notes: list[str]) -> None:
    result = clean_text(raw)
    assert result.value == clean
    assert [f.note for f in result.fixes] == notes
    assert all(f.rule == "trim" for f in result.fixes)


def test_none_passes_every_cleaner_unchanged() -> None:
    for cleaner in (clean_text, clean_upper, clean_lower, clean_email, clean_country):
        assert cleaner(None) == Ok(None)
    assert clean_phone(None, "DE") == Ok(None)


@given(st.text())
def test_clean_text_is_idempotent_and_leaves_no_stray_spaces(raw: str) -> None:
    once = clean_text(raw).value
    if once is None:
        return
    assert clean_text(once) == Ok(once)
    assert once == once.strip()
    assert "  " not in once


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_text_only_has_its_whitespace_cleaned(raw: str) -> None:
    collapsed = " ".join(raw.split())
    result = clean_text(raw)
    assert result.value == (collapsed or None)
    assert [f.rule for f in result.fixes] == ([] if collapsed == raw else ["trim"])


@given(st.text(alphabet="abc XYZ", min_size=1), st.randoms(use_true_random=False))
def test_padding_from_the_workload_is_removed(value: str, rng: random.Random) -> None:
    assert clean_text(dirty.pad(rng, value)).value == (" ".join(value.split()) or None)


def test_upper_and_lower_report_their_change() -> None:
    assert clean_upper(" de123 ") == Ok(
        "DE123",
        (
            clean_text(" de123 ").fixes[0],
            clean_upper("de123").fixes[0],
        ),
    )
    assert clean_upper("DE123") == Ok("DE123")
    assert clean_lower("ABC").value == "abc"
    assert clean_lower("ABC").fixes[0].rule == "lower"


def test_apply_default() -> None:
    assert apply_default(None, "EUR").value == "EUR"
    assert apply_default(None, "EUR").fixes[0].rule == "default"
    assert apply_default("USD", "EUR") == Ok("USD")
    assert apply_default(None, None) == Ok(None)


# ------------------------------------------------------------------------- e-mail


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("info@acme.example.com", "info@acme.example.com"),
        (" info@acme.example.com  ", "info@acme.example.com"),
        ("John.Smith@Acme.Example.COM", "John.Smith@acme.example.com"),
        ("JOHN.SMITH@ACME.EXAMPLE.COM", "john.smith@acme.example.com"),
        ("Info@acme.example.com", "info@acme.example.com"),
        ("mailto:info@acme.example.com", "info@acme.example.com"),
        ("<info@acme.example.com>", "info@acme.example.com"),
        ("info@acme.example.com.", "info@acme.example.com"),
        ("info @acme.example.com", "info@acme.example.com"),
        ("anna@münchen.example", "anna@münchen.example"),
    ],
)
def test_clean_email_repairs_and_normalises(raw: str, clean: str) -> None:
    result = clean_email(raw)
    assert isinstance(result, Ok)
    assert result.value == clean
    if raw != clean:
        assert result.fixes
        assert result.fixes[-1].after == clean


@pytest.mark.parametrize(
    "raw",
    [
        "info at acme.example.com",
        "info@@acme.example.com",
        "info@acme,com",
        "info@acme",
        "@acme.example.com",
        "info@",
        "not an address",
    ],
)
def test_clean_email_rejects(raw: str) -> None:
    result = clean_email(raw)
    assert isinstance(result, Failed)
    assert result.reason is Reason.INVALID_EMAIL
    assert raw in result.detail


_MAILBOX = st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z0-9]{1,8})?", fullmatch=True)
_DOMAIN = st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z0-9]\.example\.(com|org|net)", fullmatch=True)


@given(_MAILBOX, _DOMAIN, st.randoms(use_true_random=False))
def test_workload_bad_emails_are_repaired_to_the_original_or_rejected(
    mailbox: str, domain: str, rng: random.Random
) -> None:
    email = f"{mailbox}@{domain}"
    result = clean_email(dirty.bad_email(rng, email))
    assert isinstance(result, Failed) or result.value == email


@given(_MAILBOX, _DOMAIN)
def test_clean_email_is_idempotent(mailbox: str, domain: str) -> None:
    first = clean_email(f" {mailbox.upper()}@{domain.upper()} ")
    assert isinstance(first, Ok)
    assert clean_email(first.value) == Ok(first.value)


# -------------------------------------------------------------------------- phone


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("+49 30 661 0918", None, "+49306610918"),
        ("+49 30 661 0918", "FR", "+49306610918"),
        ("0049 30 661 0918", None, "+49306610918"),
        ("0049306610918", "DE", "+49306610918"),
        ("030/6610918", "DE", "+49306610918"),
        ("+49-30-661-0918", None, "+49306610918"),
        ("+49.30.661.0918", None, "+49306610918"),
        ("(+49) 30 661 0918", None, "+49306610918"),
        ("tel:+49306610918", None, "+49306610918"),
        ("01 66 10 91 88", "FR", "+33166109188"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("+33 1 661 0918", None, "+3316610918"),  # short for the plan, plausible: kept
        ("+44 7700 1234567", None, "+4477001234567"),
        ("+49306610918", "de", "+49306610918"),
    ],
)
def test_clean_phone_to_e164(raw: str, region: str | None, e164: str) -> None:
    result = clean_phone(raw, region)
    assert result == Ok(e164, result.fixes if isinstance(result, Ok) else ())
    if raw != e164:
        assert isinstance(result, Ok)
        assert result.fixes[-1].rule == "phone"


@pytest.mark.parametrize(
    ("typed", "region"),
    [
        ("+49 30 661 0918 ext. 12", None),
        ("030 661 0918 x12", "DE"),
        ("+49 (30) 661-0918 ext 12", None),
        ("+49306610918;ext=12", None),
    ],
)
def test_clean_phone_keeps_an_extension_after_the_e164_number(
    typed: str, region: str | None
) -> None:
    result = clean_phone(typed, region)
    assert isinstance(result, Ok)
    assert result.value == "+49306610918;ext=12"
    assert all("extension 12" in f.note for f in result.fixes if f.rule == "phone")


@pytest.mark.parametrize(
    ("raw", "region"),
    [
        ("030 6610918", None),
        ("abc", "DE"),
        ("12", "DE"),
        ("+999 123 4567", None),
        ("+49 1234567890123456", None),
    ],
)
def test_clean_phone_rejects(raw: str, region: str | None) -> None:
    result = clean_phone(raw, region)
    assert isinstance(result, Failed)
    assert result.reason is Reason.INVALID_PHONE


def test_strict_mode_demands_a_valid_number() -> None:
    assert isinstance(clean_phone("+44 20 661 0918", None), Ok)
    assert isinstance(clean_phone("+44 20 661 0918", None, strict=True), Failed)
    assert clean_phone("+49 30 661 0918", None, strict=True) == clean_phone("+49 30 661 0918")


@given(st.sampled_from(dirty.COUNTRIES), st.randoms(use_true_random=False))
def test_workload_phone_formats_come_back_as_the_same_number(
    country: dirty.Country, rng: random.Random
) -> None:
    phone = dirty.phone_number(rng, country)
    expected = phonenumbers.format_number(
        phonenumbers.parse(phone), phonenumbers.PhoneNumberFormat.E164
    )
    parts = phone.split()
    digits = "".join(parts).lstrip("+")
    dial, rest = parts[0].lstrip("+"), parts[1:]
    variants = [
        phone,
        f"00{digits}",
        "+" + "-".join([dial, *rest]),
        "+" + ".".join([dial, *rest]),
        f"(+{dial}) {' '.join(rest)}",
        f"tel:+{digits}",
        dirty.pad(rng, phone),
    ]
    for variant in variants:
        result = clean_phone(variant, country.code)
        assert isinstance(result, Ok), (variant, result)
        assert result.value == expected, variant
    with_extension = clean_phone(f"{phone} ext. 42", country.code)
    assert isinstance(with_extension, Ok)
    assert with_extension.value == f"{expected};ext=42"


# ------------------------------------------------------------------------ country


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("DE", "DE"),
        ("de", "DE"),
        ("DEU", "DE"),
        ("Germany", "DE"),
        ("Deutschland", "DE"),
        (" deutschland ", "DE"),
        ("U.S.A.", "US"),
        ("United States of America", "US"),
        ("USA", "US"),
        ("the Netherlands", "NL"),
        ("Holland", "NL"),
        ("Nederland", "NL"),
        ("Österreich", "AT"),
        ("Oesterreich", "AT"),
        ("Schweiz", "CH"),
        ("Suisse", "CH"),
        ("UK", "GB"),
        ("Great Britain", "GB"),
        ("United Kingdom", "GB"),
        ("España", "ES"),
        ("Espana", "ES"),
        ("Belgique", "BE"),
        ("België", "BE"),
        ("Italia", "IT"),
        ("FRANCE", "FR"),
        ("Großbritannien", "GB"),
        ("Czechia", "CZ"),
    ],
)
def test_clean_country(raw: str, code: str) -> None:
    result = clean_country(raw)
    assert isinstance(result, Ok)
    assert result.value == code
    if raw != code:
        assert result.fixes[-1].rule in {"country", "trim"}


def test_a_clean_code_has_no_fix() -> None:
    assert clean_country("DE") == Ok("DE")


@pytest.mark.parametrize("raw", ["Atlantis", "XX", "Germany Inc", "D"])
def test_clean_country_rejects(raw: str) -> None:
    result = clean_country(raw)
    assert isinstance(result, Failed)
    assert result.reason is Reason.UNKNOWN_COUNTRY


@pytest.mark.parametrize("country", list(pycountry.countries), ids=lambda c: c.alpha_2)
def test_every_iso_country_is_found_by_code_and_name(country: object) -> None:
    code = country.alpha_2  # type: ignore[attr-defined]
    for name in (code, country.alpha_3, country.name):  # type: ignore[attr-defined]
        assert country_lookup(name) == code, name


@pytest.mark.parametrize(
    ("vat", "phone", "code", "note"),
    [
        ("DE123456789", None, "DE", "inferred from the VAT id"),
        ("EL123456789", None, "GR", "inferred from the VAT id"),
        ("CHE-123.456.789 MWST", None, "CH", "inferred from the VAT id"),
        ("ESB12345678", "+33166109188", "ES", "inferred from the VAT id"),
        (None, "+33166109188", "FR", "inferred from the phone number"),
        (None, "+12125550123", "US", "inferred from the phone number"),
        ("123456", "+4930661091", "DE", "inferred from the phone number"),
        (None, None, None, None),
        (None, "0301234567", None, None),
    ],
)
def test_infer_country(
    vat: str | None, phone: str | None, code: str | None, note: str | None
) -> None:
    result = infer_country(vat=vat, phone=phone)
    assert result.value == code
    assert [f.note for f in result.fixes] == ([note] if note else [])


# ----------------------------------------------------------------------------- VAT


@pytest.mark.parametrize(
    ("typed", "region", "expected"),
    [
        ("fr 40 303 265 045", None, "FR40303265045"),
        ("DE 136.695.976", None, "DE136695976"),
        ("136 695 976", "DE", "DE136695976"),  # the record's country gives the prefix
        ("094259216", "GR", "EL094259216"),  # Greece's EU prefix is EL
        ("CHE-116.281.710 MWST", None, "CHE116281710MWST"),
        ("GB 980 7806 84", None, "GB980780684"),
        ("XI 980 7806 84", None, "XI980780684"),
        ("NL004495445B01", None, "NL004495445B01"),
        ("12-3456789", "US", "123456789"),  # no VAT standard: compacted only
        ("  ", "DE", None),
    ],
)
def test_clean_vat_checks_and_compacts_by_the_country_standard(
    typed: str, region: str | None, expected: str | None
) -> None:
    result = clean_vat(typed, region)
    assert isinstance(result, Ok), result
    assert result.value == expected
    if expected is not None and expected != typed:
        assert result.fixes[-1].rule == "vat"


@pytest.mark.parametrize(
    ("typed", "region", "detail"),
    [
        ("FR2 194 564 397 8", None, "checksum"),
        ("DE136695977", None, "checksum"),
        ("DE 12345678", "DE", "length"),
        ("136695977", "DE", "checksum"),
    ],
)
def test_clean_vat_refuses_an_id_that_breaks_its_standard(
    typed: str, region: str | None, detail: str
) -> None:
    result = clean_vat(typed, region)
    assert isinstance(result, Failed)
    assert result.reason is Reason.INVALID_VAT
    assert detail in result.detail


@given(st.randoms(use_true_random=False))
def test_workload_vat_ids_pass_their_standard(rng: random.Random) -> None:
    party = dirty.new_party(rng, individual_share=0)
    if party.vat is not None:
        assert isinstance(clean_vat(party.vat, party.country), Ok), party.vat
