"""Cleansing: turn the values people type into the canonical form, saying what changed.

Every cleaner takes one value and returns :class:`~streams.validation.Ok` with the clean
value and one :class:`~streams.validation.Fix` per change (so fixes can be shown and
counted), or :class:`~streams.validation.Failed` when the value cannot be made valid.
``None`` passes through unchanged; a string of only whitespace becomes ``None``.

- :func:`clean_text`: Unicode NFC, zero-width characters removed, leading and trailing
  whitespace stripped, inner runs of whitespace (tabs, no-break spaces) collapsed to one
  space.
- :func:`clean_email`: the obvious wrappers removed (``mailto:``, ``<...>``, a trailing
  dot, spaces around the ``@``), then validated with ``email-validator`` (syntax only,
  no DNS) and put in its normalised form: domain lower-case (domains are
  case-insensitive), role mailboxes such as ``Info``/``Postmaster`` lower-case. Other
  local parts keep their case, since RFC 5321 lets a mail server treat them
  case-sensitively, except when they have no lower-case letter at all: an all-capitals
  address is a typing artefact and is lower-cased. Matching across systems compares
  addresses case-insensitively (see :mod:`streams.crosswalk`).
- :func:`clean_phone`: any common notation (``0049 30 ...``, ``030/...``, ``(+49) 30``,
  dots, dashes, ``tel:``) to E.164, with the record's country as the region for
  national numbers. The check is for plausibility (a known country code, 4 to 15
  digits), not numbering-plan validity, which many real and legacy numbers fail;
  ``strict=True`` demands a valid number. An extension (``ext. 89``, ``x89``) is kept
  after the number in RFC 3966 form: ``+493012345678;ext=89``.
- :func:`clean_vat`: a VAT or tax id validated and compacted by its country's standard
  with ``python-stdnum`` (length, format, check digits): ``FR 40 303 265 045`` ->
  ``FR40303265045``; a number typed without its country prefix gets the record's
  country's; a wrong check digit fails. A country without a standard in the library
  (or a number with no country at all) is only compacted.
- :func:`clean_country`: ISO codes, English and native names and common aliases
  (``Deutschland``, ``U.S.A.``, ``Holland``) to ISO 3166-1 alpha-2, via a table built
  once from :mod:`pycountry` plus aliases for the countries the business trades with.
- :func:`infer_country`: a missing country from the VAT id's prefix or the phone
  number's country code.
- :func:`clean_upper`, :func:`clean_lower`, :func:`apply_default`. Identifiers (SKUs,
  customer numbers) are only trimmed: they travel as entered and are compared by
  :func:`streams.validation.identifier_key`.

Pure functions, no I/O, no clock.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from functools import cache, lru_cache
from typing import Any, Final

import phonenumbers
import pycountry
from email_validator import EmailNotValidError, validate_email
from stdnum import get_cc_module
from stdnum.eu import vat as eu_vat
from stdnum.exceptions import ValidationError as NumberInvalid

from streams.validation import Failed, Fix, Ok, Reason

__all__ = [
    "CLEANERS",
    "COUNTRY_ALIASES",
    "REGIONAL_CLEANERS",
    "apply_default",
    "clean_country",
    "clean_email",
    "clean_lower",
    "clean_phone",
    "clean_text",
    "clean_upper",
    "clean_vat",
    "country_lookup",
    "infer_country",
]

_ZERO_WIDTH: Final = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
_WHITESPACE_RUN: Final = re.compile(r"\s+")


_CACHED_VALUES: Final = 4096
"""How many recent values the costly cleaners (e-mail, phone, VAT) remember per cleaner.

They are pure and their results immutable, and the same values come back again and
again (an update maps its old row too; a record changes, its e-mail does not), so a
value seen recently costs a dictionary lookup instead of a parse."""


def _fix(rule: str, before: object, after: object, note: str) -> Fix:
    return Fix(rule=rule, before=before, after=after, note=note)


# --------------------------------------------------------------------------- text


def clean_text(value: str | None) -> Ok[str | None]:
    """Normalise whitespace and Unicode form; blank becomes None. Never fails."""
    if value is None:
        return Ok(None)
    # ASCII is its own NFC and holds no zero-width characters: only whitespace can change.
    if value.isascii() and value and " ".join(value.split()) == value:
        return Ok(value)
    fixes: list[Fix] = []
    text = unicodedata.normalize("NFC", value)
    if text != value:
        fixes.append(_fix("trim", value, text, "normalised Unicode to NFC"))
    stripped = _ZERO_WIDTH.sub("", text)
    if stripped != text:
        fixes.append(_fix("trim", text, stripped, "removed zero-width characters"))
    collapsed = " ".join(stripped.split())
    if collapsed != stripped:
        trimmed = stripped.strip()
        note = "trimmed whitespace" if collapsed == trimmed else "collapsed whitespace"
        fixes.append(_fix("trim", stripped, collapsed or None, note))
    if not collapsed:
        return Ok(None, tuple(fixes))
    return Ok(collapsed, tuple(fixes))


def clean_upper(value: str | None) -> Ok[str | None]:
    """:func:`clean_text`, then upper case (codes, VAT ids, SKUs). Never fails."""
    return _recase(value, str.upper, "upper", "upper-cased")


def clean_lower(value: str | None) -> Ok[str | None]:
    """:func:`clean_text`, then lower case. Never fails."""
    return _recase(value, str.lower, "lower", "lower-cased")


def _recase(
    value: str | None, change: Callable[[str], str], rule: str, note: str
) -> Ok[str | None]:
    text = clean_text(value)
    if text.value is None:
        return text
    changed = change(text.value)
    if changed == text.value:
        return text
    return Ok(changed, (*text.fixes, _fix(rule, text.value, changed, note)))


def apply_default(value: object, default: object) -> Ok[object]:
    """Return ``default`` in place of a missing (None) value, as a ``default`` fix."""
    if value is not None or default is None:
        return Ok(value)
    return Ok(default, (_fix("default", None, default, "filled in the default"),))


# -------------------------------------------------------------------------- e-mail

_MAILTO: Final = re.compile(r"^mailto:", re.IGNORECASE)
_SPACE_AT: Final = re.compile(r"\s*@\s*")


def _unwrap_email(text: str) -> tuple[str, list[str]]:
    """Remove the wrappers an address picks up in copy and paste; report what went."""
    notes: list[str] = []
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
        notes.append("removed angle brackets")
    if _MAILTO.match(text):
        text = _MAILTO.sub("", text).strip()
        notes.append("removed mailto: prefix")
    if text.endswith("."):
        text = text.rstrip(".")
        notes.append("removed trailing dot")
    if text.count("@") == 1:
        joined = _SPACE_AT.sub("@", text)
        if joined != text:
            text = joined
            notes.append("removed spaces around @")
    return text, notes


@lru_cache(maxsize=_CACHED_VALUES)
def clean_email(value: str | None) -> Ok[str | None] | Failed:
    """Return the e-mail address cleaned and validated (syntax only), or why it is invalid.

    See the module docstring for what is repaired and how case is treated.
    """
    text = clean_text(value)
    if text.value is None:
        return text
    unwrapped, notes = _unwrap_email(text.value)
    try:
        checked = validate_email(unwrapped, check_deliverability=False)
    except EmailNotValidError as exc:
        return Failed(Reason.INVALID_EMAIL, None, f"{value!r}: {exc}")
    local, _, domain = checked.normalized.rpartition("@")
    typed_local, _, typed_domain = unwrapped.rpartition("@")
    if domain != typed_domain:
        notes.append("normalised the domain")
    if any(c.isupper() for c in local) and not any(c.islower() for c in local):
        local = local.lower()
    if local != typed_local:
        notes.append("normalised the local part")
    result = f"{local}@{domain}"
    fixes = list(text.fixes)
    if result != text.value:
        fixes.append(_fix("email", text.value, result, "; ".join(notes)))
    return Ok(result, tuple(fixes))


# --------------------------------------------------------------------------- phone

_MIN_NATIONAL_DIGITS: Final = 4
_MAX_E164_DIGITS: Final = 15


@lru_cache(maxsize=_CACHED_VALUES)
def clean_phone(
    value: str | None, region: str | None = None, *, strict: bool = False
) -> Ok[str | None] | Failed:
    """Return the phone number in E.164 (``+493012345678``), or why it cannot be one.

    Args:
        value: the number as typed.
        region: ISO 3166-1 alpha-2 country used for numbers written without a country
            code (``030 1234567``); usually the record's own country. None: such
            numbers fail.
        strict: also demand a number valid in its country's numbering plan.
    """
    text = clean_text(value)
    if text.value is None:
        return text
    typed = text.value
    candidate = typed
    if candidate.startswith("00"):
        # The international call prefix of most of the world; no national number starts
        # with it, so it means the same typed into a record of any country.
        candidate = "+" + candidate[2:]
    try:
        number = phonenumbers.parse(candidate, region.upper() if region else None)
    except phonenumbers.NumberParseException as exc:
        if region is None and not candidate.lstrip().startswith(("+", "tel:")):
            detail = "no country code, and no country to take one from"
        else:
            detail = str(exc)
        return Failed(Reason.INVALID_PHONE, None, f"{typed!r}: {detail}")
    national = str(number.national_number)
    digits = len(str(number.country_code)) + len(national)
    if phonenumbers.region_code_for_country_code(number.country_code or 0) == "ZZ":
        return Failed(Reason.INVALID_PHONE, None, f"{typed!r}: unknown country code")
    if len(national) < _MIN_NATIONAL_DIGITS or digits > _MAX_E164_DIGITS:
        return Failed(Reason.INVALID_PHONE, None, f"{typed!r}: implausible length")
    if strict and not phonenumbers.is_valid_number(number):
        return Failed(Reason.INVALID_PHONE, None, f"{typed!r}: not a valid number")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    note = "formatted as E.164"
    if number.extension:
        e164 += f";ext={number.extension}"
        note += f" with extension {number.extension}"
    fixes = list(text.fixes)
    if e164 != typed:
        fixes.append(_fix("phone", typed, e164, note))
    return Ok(e164, tuple(fixes))


# ----------------------------------------------------------------------------- VAT

_VAT_NOISE: Final = re.compile(r"[\s.\-/:,]")
_EU_VAT_PREFIX: Final = {"GR": "EL"}
"""Countries whose EU VAT prefix is not their ISO code (the reverse of _VAT_PREFIXES)."""


def _vat_module(country: str) -> Any:
    """python-stdnum's VAT module for a country or EU VAT prefix, or None if it has none."""
    code = country.lower()
    if code in eu_vat.MEMBER_STATES or code == "el":
        return eu_vat  # knows every member's prefix, EL and XI included
    try:
        return get_cc_module(code, "vat")
    except ImportError:
        return None


@lru_cache(maxsize=_CACHED_VALUES)
def clean_vat(value: str | None, region: str | None = None) -> Ok[str | None] | Failed:
    """Return the VAT id validated and compacted by its country's standard, or why it is invalid.

    Args:
        value: the id as typed (``fr 40 303 265 045``, ``CHE-116.281.710 MWST``).
        region: ISO 3166-1 alpha-2 country of the record, for an id typed without its
            country prefix (``136695976`` in a German record is ``DE136695976``).

    The country is the id's own prefix (``EL`` Greece, ``XI`` Northern Ireland, ``CHE``
    Switzerland), else ``region``. An id of a country python-stdnum has no VAT module
    for, or of no known country, is compacted and left unchecked.
    """
    text = clean_text(value)
    if text.value is None:
        return text
    typed = text.value
    compact = _VAT_NOISE.sub("", typed).upper()
    prefix = compact[:2] if compact[:2].isalpha() else None
    module = None
    notes = []
    if prefix is not None:
        module = _vat_module(prefix)
    elif region:
        module = _vat_module(region)
        if module is not None:
            prefix = _EU_VAT_PREFIX.get(region.upper(), region.upper())
            compact = prefix + compact
            notes.append(f"added the country prefix {prefix}")
    if module is None or prefix is None:
        result = compact
        notes.insert(0, "compacted (no standard to check it against)")
    else:
        try:
            number = str(module.validate(compact))
        except NumberInvalid as exc:
            return Failed(Reason.INVALID_VAT, None, f"{typed!r}: {exc}")
        result = number if number.startswith(prefix) else prefix + number
        notes.insert(0, "compacted and checked by its country's standard")
    fixes = list(text.fixes)
    if result != typed:
        fixes.append(_fix("vat", typed, result, "; ".join(notes)))
    return Ok(result, tuple(fixes))


# ------------------------------------------------------------------------- country

COUNTRY_ALIASES: Final[Mapping[str, tuple[str, ...]]] = {
    "AT": ("Österreich", "Oesterreich", "Autriche", "Republik Österreich"),
    "BE": ("Belgique", "België", "Belgien", "Belgio", "Bélgica", "Kingdom of Belgium"),
    "CH": (
        "Schweiz",
        "Suisse",
        "Svizzera",
        "Svizra",
        "Suiza",
        "Helvetia",
        "Confoederatio Helvetica",
        "Swiss Confederation",
    ),
    "DE": (
        "Deutschland",
        "Allemagne",
        "Alemania",
        "Germania",
        "Duitsland",
        "BRD",
        "Bundesrepublik Deutschland",
        "Federal Republic of Germany",
    ),
    "ES": ("España", "Espana", "Spanien", "Espagne", "Spagna", "Kingdom of Spain"),
    "FR": ("Frankreich", "Francia", "Frankrijk", "République française", "French Republic"),
    "GB": (
        "UK",
        "U.K.",
        "Great Britain",
        "Britain",
        "England",
        "Scotland",
        "Wales",
        "Northern Ireland",
        "Vereinigtes Königreich",
        "Großbritannien",
        "Grossbritannien",
        "Royaume-Uni",
        "Regno Unito",
        "Reino Unido",
        "Verenigd Koninkrijk",
    ),
    "IT": ("Italia", "Italien", "Italie", "Italian Republic"),
    "NL": (
        "Nederland",
        "Netherlands",
        "Holland",
        "Niederlande",
        "Pays-Bas",
        "Paesi Bassi",
        "Países Bajos",
        "Kingdom of the Netherlands",
    ),
    "US": (
        "USA",
        "U.S.A.",
        "U.S.",
        "America",
        "United States",
        "Vereinigte Staaten",
        "Vereinigte Staaten von Amerika",
        "États-Unis",
        "Estados Unidos",
        "Stati Uniti",
    ),
}
"""Names in use for the countries the business trades with, beyond pycountry's own."""

_VAT_PREFIXES: Final = {"EL": "GR", "XI": "GB"}
"""EU VAT prefixes that are not the country's ISO code (Greece; Northern Ireland)."""


def _country_key(name: str) -> str:
    """Fold a country name for lookup: no accents, case, dots or punctuation, no 'the'."""
    folded = unicodedata.normalize("NFKD", name.replace("ß", "ss"))
    ascii_text = "".join(c for c in folded if not unicodedata.combining(c)).casefold()
    ascii_text = ascii_text.replace(".", "").replace("'", "")
    words = re.sub(r"[^a-z0-9]+", " ", ascii_text).split()
    if words[:1] == ["the"]:
        words = words[1:]
    return " ".join(words)


@cache
def _country_table() -> Mapping[str, str]:
    table: dict[str, str] = {}
    for country in pycountry.countries:
        code = str(country.alpha_2)
        for attr in ("official_name", "name", "common_name", "alpha_3", "alpha_2"):
            name = getattr(country, attr, None)
            if name:
                table[_country_key(str(name))] = code
    for code, aliases in COUNTRY_ALIASES.items():
        for alias in aliases:
            table[_country_key(alias)] = code
    return table


def country_lookup(name: str) -> str | None:
    """Return the ISO 3166-1 alpha-2 code for a country name or code, or None if unknown."""
    return _country_table().get(_country_key(name))


def clean_country(value: str | None) -> Ok[str | None] | Failed:
    """Return the ISO 3166-1 alpha-2 code for a country name or code, or why there is none."""
    text = clean_text(value)
    if text.value is None:
        return text
    code = country_lookup(text.value)
    if code is None:
        return Failed(Reason.UNKNOWN_COUNTRY, None, f"{text.value!r} is not a known country")
    if code == text.value:
        return text
    return Ok(code, (*text.fixes, _fix("country", text.value, code, "mapped to ISO 3166-1")))


def infer_country(*, vat: str | None = None, phone: str | None = None) -> Ok[str | None]:
    """Infer a missing country: from the VAT id's prefix first, else from an E.164 phone.

    Returns ``Ok(None)`` when neither tells; a found country comes with a ``country``
    fix naming its source. Never fails.
    """
    if vat:
        prefix = vat.strip()[:2].upper()
        code = _VAT_PREFIXES.get(prefix, prefix)
        if prefix.isalpha() and pycountry.countries.get(alpha_2=code) is not None:
            return Ok(code, (_fix("country", None, code, "inferred from the VAT id"),))
    if phone and phone.startswith("+"):
        try:
            number = phonenumbers.parse(phone, None)
        except phonenumbers.NumberParseException:
            return Ok(None)
        region = phonenumbers.region_code_for_number(number) or (
            phonenumbers.region_code_for_country_code(number.country_code or 0)
        )
        if region and region != "ZZ" and region != "001":
            return Ok(region, (_fix("country", None, region, "inferred from the phone number"),))
    return Ok(None)


CLEANERS: Final[Mapping[str, Callable[[str | None], Ok[str | None] | Failed]]] = {
    "trim": clean_text,
    "upper": clean_upper,
    "lower": clean_lower,
    "email": clean_email,
    "country": clean_country,
}
"""The single-value cleaners by rule name. ``phone`` and ``vat`` are not here: they also
take the record's country (:data:`REGIONAL_CLEANERS`)."""

REGIONAL_CLEANERS: Final[
    Mapping[str, Callable[[str | None, str | None], Ok[str | None] | Failed]]
] = {
    "phone": clean_phone,
    "vat": clean_vat,
}
"""The cleaners that read the record's country as their second argument, by rule name."""
