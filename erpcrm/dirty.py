"""Business values for the workload generator: clean ones, and the dirt real systems collect.

Everything here is a pure function of a :class:`random.Random` and plain values: no I/O,
no clock, no global random state. The same generator state always yields the same value,
which is what makes a workload run reproducible from its seed.

The dirt follows DESIGN.md section 3: padding and stray whitespace, wrong letter case,
badly formatted phone numbers and e-mail addresses, duplicate customers (a new row with
the VAT number or e-mail of an existing one), a missing country, negative quantities
and SKUs the ERP does not know.
"""

from __future__ import annotations

import dataclasses
import random
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from streams.cleansing import clean_vat
from streams.validation import Ok

__all__ = [
    "COUNTRIES",
    "INDUSTRIES",
    "ContactValues",
    "Country",
    "DirtyKind",
    "PartyValues",
    "apply_contact_dirt",
    "apply_party_dirt",
    "bad_email",
    "bad_phone",
    "contact_changes",
    "country_by_code",
    "duplicate_party",
    "email_domain",
    "mobile_number",
    "negative_quantity",
    "new_contact",
    "new_party",
    "pad",
    "party_changes",
    "phone_number",
    "slug",
    "unknown_sku",
    "wrong_case",
]


class DirtyKind(StrEnum):
    """The kinds of bad data the workload injects."""

    PADDING = "padding"
    WRONG_CASE = "wrong_case"
    BAD_PHONE = "bad_phone"
    BAD_EMAIL = "bad_email"
    DUPLICATE_CUSTOMER = "duplicate_customer"
    MISSING_COUNTRY = "missing_country"
    NEGATIVE_QUANTITY = "negative_quantity"
    UNKNOWN_SKU = "unknown_sku"


@dataclass(frozen=True)
class Country:
    """What it takes to write a plausible address, phone number and VAT id for a country."""

    code: str
    suffixes: tuple[str, ...]
    cities: tuple[tuple[str, str], ...]
    """(city, postcode) pairs."""
    streets: tuple[str, ...]
    number_first: bool
    """Whether the house number precedes the street name ("221 Baker Street")."""
    dial: str
    area_codes: tuple[str, ...]
    mobile_prefixes: tuple[str, ...]
    vat_pattern: str | None
    """VAT id layout, ``#`` standing for a digit; ``None`` where there is no VAT."""


COUNTRIES: tuple[Country, ...] = (
    Country(
        "DE",
        ("GmbH", "AG", "GmbH & Co. KG"),
        (("Berlin", "10117"), ("Hamburg", "20095"), ("München", "80331"), ("Köln", "50667")),
        ("Friedrichstraße", "Hauptstraße", "Industriestraße", "Am Hafen"),
        False,
        "+49",
        ("30", "40", "89", "221"),
        ("151", "160", "172"),
        "DE#########",
    ),
    Country(
        "FR",
        ("SARL", "SAS", "SA"),
        (("Paris", "75001"), ("Lyon", "69002"), ("Marseille", "13001"), ("Lille", "59000")),
        ("Rue de Rivoli", "Avenue Jean Jaurès", "Boulevard Voltaire", "Rue du Commerce"),
        True,
        "+33",
        ("1", "4", "3"),
        ("6", "7"),
        "FR###########",
    ),
    Country(
        "NL",
        ("B.V.", "N.V."),
        (("Amsterdam", "1016 DK"), ("Utrecht", "3511 AX"), ("Rotterdam", "3011 AD")),
        ("Keizersgracht", "Stationsplein", "Industrieweg"),
        False,
        "+31",
        ("20", "30", "10"),
        ("6",),
        "NL#########B01",
    ),
    Country(
        "GB",
        ("Ltd", "PLC", "LLP"),
        (("London", "NW1 6XE"), ("Manchester", "M1 1AE"), ("Leeds", "LS1 4AP")),
        ("Baker Street", "High Street", "Station Road", "Mill Lane"),
        True,
        "+44",
        ("20", "161", "113"),
        ("7700", "7911"),
        "GB#########",
    ),
    Country(
        "US",
        ("Inc.", "LLC", "Corp."),
        (("New York", "10016"), ("Boston", "02108"), ("Chicago", "60601"), ("Austin", "78701")),
        ("Madison Avenue", "Main Street", "Commerce Drive", "Oak Street"),
        True,
        "+1",
        ("212", "617", "312", "512"),
        ("646", "917"),
        None,
    ),
    Country(
        "IT",
        ("S.r.l.", "S.p.A."),
        (("Milano", "20123"), ("Torino", "10121"), ("Bologna", "40121")),
        ("Via Torino", "Via Roma", "Corso Italia"),
        False,
        "+39",
        ("02", "011", "051"),
        ("347", "333"),
        "IT###########",
    ),
    Country(
        "ES",
        ("S.L.", "S.A."),
        (("Madrid", "28014"), ("Valencia", "46002"), ("Barcelona", "08002")),
        ("Calle de Alcalá", "Gran Vía", "Calle Mayor"),
        False,
        "+34",
        ("91", "96", "93"),
        ("612", "699"),
        "ESB########",
    ),
    Country(
        "AT",
        ("GmbH", "AG"),
        (("Wien", "1060"), ("Graz", "8010"), ("Linz", "4020")),
        ("Mariahilfer Straße", "Landstraße", "Hauptplatz"),
        False,
        "+43",
        ("1", "316", "732"),
        ("664", "676"),
        "ATU########",
    ),
    Country(
        "BE",
        ("SA", "NV", "BV"),
        (("Bruxelles", "1000"), ("Antwerpen", "2000"), ("Gent", "9000")),
        ("Rue Neuve", "Meir", "Kouter"),
        True,
        "+32",
        ("2", "3", "9"),
        ("470", "475"),
        "BE0#########",
    ),
    Country(
        "CH",
        ("AG", "GmbH", "SA"),
        (("Zürich", "8001"), ("Basel", "4051"), ("Genève", "1201")),
        ("Bahnhofstrasse", "Marktgasse", "Rue du Rhône"),
        False,
        "+41",
        ("44", "61", "22"),
        ("79", "76"),
        "CHE-###.###.### MWST",
    ),
)

_COUNTRY_BY_CODE: Mapping[str, Country] = {c.code: c for c in COUNTRIES}

INDUSTRIES: tuple[str, ...] = (
    "Manufacturing",
    "Retail",
    "Wholesale",
    "Construction",
    "Transportation",
    "Engineering",
    "Energy",
    "Food & Beverage",
    "Machinery",
    "Healthcare",
    "Hospitality",
)

_NAME_WORDS_A: tuple[str, ...] = (
    "Nordwind", "Alpen", "Blue Harbor", "Silverline", "Greenfield", "Atlas", "Falcon",
    "Riverside", "Summit", "Oakwood", "Meridian", "Polaris", "Redstone", "Crescent",
    "Harbor Bay", "Evergreen", "Ironbridge", "Lakeside", "Sunrise", "Westbrook", "Bergmann",
    "Delta", "Orion", "Kestrel", "Granite", "Maple", "Northgate", "Pioneer", "Rheinland",
    "Seaview", "Stellar", "Vanguard", "Windmill", "Zenith", "Cobalt", "Aurora",
)  # fmt: skip
_NAME_WORDS_B: tuple[str, ...] = (
    "Trading", "Logistics", "Industrial", "Components", "Supply", "Engineering", "Retail",
    "Systems", "Works", "Distribution", "Technik", "Manufacturing", "Wholesale", "Partners",
    "Solutions", "Hardware", "Tools", "Machines", "Foods", "Automation", "Equipment",
    "Handel", "Metals", "Plastics", "Electrics", "Facilities", "Projects", "Services",
    "Fittings", "Instruments",
)  # fmt: skip
_FIRST_NAMES: tuple[str, ...] = (
    "Anna", "Lukas", "Marie", "Jonas", "Sophie", "Paul", "Emma", "Louis", "Clara", "Matteo",
    "Julia", "Noah", "Lea", "Élodie", "Søren", "Zoë", "Oliver", "Amelia", "Lars", "Inès",
    "Jakub", "Chiara", "Pablo", "Hannah", "Tomás", "Freya", "Malik", "Yara", "Björn", "Nina",
)  # fmt: skip
_LAST_NAMES: tuple[str, ...] = (
    "Schmidt", "Martin", "de Vries", "Smith", "Johnson", "Rossi", "García", "Gruber",
    "Peeters", "Meier", "Bernard", "Jansen", "Brown", "Bianchi", "López", "Huber", "Dubois",
    "Müller", "Wilson", "Moreau", "Fischer", "Keller", "Novak", "O'Brien", "Van den Berg",
    "Nowak", "Kowalski", "Lefèvre", "Sánchez", "Weiß", "Andersson", "Haas", "Costa",
    "Schneider", "Taylor", "Romano", "Dupont", "Wagner", "Fernández", "Hoffmann",
)  # fmt: skip
_TITLES: tuple[str, ...] = (
    "Purchasing Manager",
    "Managing Director",
    "Head of Operations",
    "Buyer",
    "Accounts Payable",
    "Sales Director",
    "Office Manager",
    "CFO",
    "Warehouse Lead",
)
_MAILBOXES: tuple[str, ...] = ("info", "sales", "office", "contact", "orders", "hello")
_UPDATE_MAILBOXES: tuple[str, ...] = ("billing", "accounts", "purchasing", "orders", "office")


@dataclass(frozen=True)
class PartyValues:
    """A customer (ERP ``res_partner``) or account (CRM ``accounts``) in neutral field names.

    ``country`` is an ISO 3166-1 alpha-2 code when clean. Any field may carry dirt.
    """

    name: str
    is_company: bool = True
    vat: str | None = None
    email: str | None = None
    phone: str | None = None
    website: str | None = None
    street: str | None = None
    city: str | None = None
    zip: str | None = None
    country: str | None = None
    industry: str | None = None


@dataclass(frozen=True)
class ContactValues:
    """A contact person (CRM ``contacts``) in neutral field names."""

    first_name: str | None
    last_name: str
    email: str | None = None
    phone: str | None = None
    title: str | None = None


# --- clean values -----------------------------------------------------------------------


# Letters NFKD does not decompose into an ASCII base letter.
_ASCII_FOLD = str.maketrans(
    {"ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "ß": "ss", "ł": "l", "Ł": "L", "đ": "d"}
)


def slug(text: str) -> str:
    """Lower-case ASCII form of ``text`` for host names and mailboxes ("Søren" -> "soren")."""
    folded = unicodedata.normalize("NFKD", text.translate(_ASCII_FOLD))
    ascii_text = folded.encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def country_by_code(code: str | None) -> Country | None:
    """The country for a clean ISO code; ``None`` for a missing or dirty one."""
    if code is None:
        return None
    return _COUNTRY_BY_CODE.get(code.strip().upper())


def _digits(rng: random.Random, n: int) -> str:
    return "".join(str(rng.randrange(10)) for _ in range(n))


def _vat(rng: random.Random, country: Country) -> str | None:
    """A VAT id in the country's layout whose check digits hold (python-stdnum agrees).

    The digits come from ``rng`` as they always did; a draw whose check digits fail is
    redrawn from a generator seeded with it, so runs of one seed stay the same.
    """
    if country.vat_pattern is None:
        return None
    pattern = country.vat_pattern
    vat = "".join(str(rng.randrange(10)) if ch == "#" else ch for ch in pattern)
    redraw = random.Random(vat)  # noqa: S311 - reproducible data, not secrets
    while not isinstance(clean_vat(vat), Ok):
        vat = "".join(str(redraw.randrange(10)) if ch == "#" else ch for ch in pattern)
    return vat


def phone_number(rng: random.Random, country: Country) -> str:
    """A landline number in international format, e.g. ``+49 30 661 0918``."""
    return f"{country.dial} {rng.choice(country.area_codes)} {_digits(rng, 3)} {_digits(rng, 4)}"


def mobile_number(rng: random.Random, country: Country) -> str:
    """A mobile number in international format, e.g. ``+49 151 4410938``."""
    return f"{country.dial} {rng.choice(country.mobile_prefixes)} {_digits(rng, 7)}"


def _address(rng: random.Random, country: Country) -> tuple[str, str, str]:
    city, postcode = rng.choice(country.cities)
    street, number = rng.choice(country.streets), rng.randint(1, 240)
    line = f"{number} {street}" if country.number_first else f"{street} {number}"
    return line, city, postcode


def email_domain(email: str | None, name: str) -> str:
    """The domain of ``email`` if it has a usable one, else one derived from ``name``."""
    if email is not None:
        _, at, domain = email.strip().rpartition("@")
        domain = domain.strip().strip(".").lower()
        if at and "." in domain and re.fullmatch(r"[a-z0-9.-]+", domain):
            return domain
    return f"{slug(name) or 'customer'}.example.com"


def _person_mailbox(first_name: str | None, last_name: str) -> str:
    parts = [slug(first_name or ""), slug(last_name)]
    return ".".join(p for p in parts if p) or "contact"


def new_party(rng: random.Random, *, individual_share: float = 0.1) -> PartyValues:
    """A clean new customer: company (or, with ``individual_share``, a private person)."""
    country = rng.choice(COUNTRIES)
    street, city, postcode = _address(rng, country)
    phone = phone_number(rng, country)
    if rng.random() < individual_share:
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        mailbox = f"{_person_mailbox(first, last)}{rng.randint(1, 999)}"
        return PartyValues(
            name=f"{first} {last}",
            is_company=False,
            email=f"{mailbox}@mail.example.net",
            phone=phone,
            street=street,
            city=city,
            zip=postcode,
            country=country.code,
        )
    words = f"{rng.choice(_NAME_WORDS_A)} {rng.choice(_NAME_WORDS_B)}"
    # The number keeps two unrelated companies of the same name from sharing a domain.
    domain = f"{slug(words)}-{rng.randint(100, 999)}.example.com"
    return PartyValues(
        name=f"{words} {rng.choice(country.suffixes)}",
        is_company=True,
        vat=_vat(rng, country),
        email=f"{rng.choice(_MAILBOXES)}@{domain}",
        phone=phone,
        website=f"https://www.{domain}",
        street=street,
        city=city,
        zip=postcode,
        country=country.code,
        industry=rng.choice(INDUSTRIES),
    )


def new_contact(
    rng: random.Random,
    *,
    account_email: str | None,
    account_name: str,
    country_code: str | None,
) -> ContactValues:
    """A clean contact person for an account, with a mailbox at the account's domain."""
    country = country_by_code(country_code) or rng.choice(COUNTRIES)
    first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    domain = email_domain(account_email, account_name)
    return ContactValues(
        first_name=first,
        last_name=last,
        email=f"{_person_mailbox(first, last)}@{domain}",
        phone=mobile_number(rng, country),
        title=rng.choice(_TITLES),
    )


def party_changes(
    rng: random.Random, field: str, current: PartyValues, dirty: DirtyKind | None
) -> dict[str, str | None]:
    """New values for one field group of an existing customer/account.

    ``field`` is ``email``, ``phone``, ``address`` (street, city, zip, country), ``name``
    or ``industry``. The result maps :class:`PartyValues` field names to new values;
    ``dirty`` (one of the text kinds or ``MISSING_COUNTRY``) spoils them.
    """
    country = country_by_code(current.country) or rng.choice(COUNTRIES)
    changes: dict[str, str | None]
    if field == "email":
        domain = email_domain(current.email, current.name)
        options = [m for m in _UPDATE_MAILBOXES if f"{m}@{domain}" != current.email]
        changes = {"email": f"{rng.choice(options)}@{domain}"}
    elif field == "phone":
        changes = {"phone": phone_number(rng, country)}
    elif field == "address":
        street, city, postcode = _address(rng, country)
        changes = {"street": street, "city": city, "zip": postcode, "country": country.code}
    elif field == "name":
        changes = {"name": current.name}
    elif field == "industry":
        options = [i for i in INDUSTRIES if i != current.industry]
        changes = {"industry": rng.choice(options)}
    else:
        raise ValueError(f"unknown party field group {field!r}")
    if dirty is not None:
        changes = _spoil_changes(rng, changes, dirty)
    return changes


def contact_changes(
    rng: random.Random,
    field: str,
    current: ContactValues,
    *,
    account_email: str | None,
    account_name: str,
    country_code: str | None,
    dirty: DirtyKind | None,
) -> dict[str, str | None]:
    """New values for one field group of an existing contact.

    ``field`` is ``email``, ``phone``, ``title`` or ``name`` (a changed last name, or the
    same names re-typed when ``dirty`` is a text kind).
    """
    country = country_by_code(country_code) or rng.choice(COUNTRIES)
    changes: dict[str, str | None]
    if field == "email":
        domain = email_domain(account_email, account_name)
        mailbox = _person_mailbox(current.first_name, current.last_name)
        if f"{mailbox}@{domain}" == current.email:
            mailbox = f"{(slug(current.first_name or '') or 'c')[:1]}.{slug(current.last_name)}"
        changes = {"email": f"{mailbox}@{domain}"}
    elif field == "phone":
        changes = {"phone": mobile_number(rng, country)}
    elif field == "title":
        changes = {"title": rng.choice([t for t in _TITLES if t != current.title])}
    elif field == "name":
        if dirty in (DirtyKind.PADDING, DirtyKind.WRONG_CASE):
            changes = {"first_name": current.first_name, "last_name": current.last_name}
        else:
            changes = {"last_name": rng.choice([n for n in _LAST_NAMES if n != current.last_name])}
    else:
        raise ValueError(f"unknown contact field group {field!r}")
    if dirty is not None:
        changes = _spoil_changes(rng, changes, dirty)
    return changes


# --- dirt --------------------------------------------------------------------------------


def pad(rng: random.Random, value: str) -> str:
    """``value`` with stray whitespace: leading, trailing, doubled, a tab or a no-break space.

    The words stay the same: ``" ".join(pad(v).split()) == " ".join(v.split())``.
    """
    variants = [
        f"  {value}",
        f"{value}   ",
        f" {value} ",
        value.replace(" ", "  ", 1) if " " in value else f"{value}  ",
        f"{value}\t",
        f"\u00a0{value}",
    ]
    return rng.choice(variants)


def wrong_case(rng: random.Random, value: str) -> str:
    """``value`` in the wrong letter case (all upper, all lower or swapped).

    Returns a different string whenever ``value`` has a cased letter.
    """
    variants = [v for v in (value.upper(), value.lower(), value.swapcase()) if v != value]
    return rng.choice(variants) if variants else value


def bad_phone(rng: random.Random, phone: str) -> str:
    """A badly formatted rendering of an international number such as ``+49 30 661 0918``.

    Dial prefix ``00``, national form with a slash, dashes, dots, parentheses, a ``tel:``
    prefix, an extension, or the local part alone.
    """
    parts = phone.split()
    digits = re.sub(r"\D", "", phone)
    dial = parts[0].lstrip("+") if parts else digits[:2]
    rest = parts[1:] if len(parts) > 1 else [digits]
    variants = [
        f"00{digits}",
        f"0{rest[0]}/{''.join(rest[1:])}" if len(rest) > 1 else f"0{rest[0]}",
        "+" + "-".join([dial, *rest]),
        "+" + ".".join([dial, *rest]),
        f"(+{dial}) {' '.join(rest)}",
        f"tel:+{digits}",
        f"{phone} ext. {rng.randint(10, 99)}",
        " ".join(rest[1:]) if len(rest) > 1 else rest[0],
    ]
    return rng.choice(variants)


def bad_email(rng: random.Random, email: str) -> str:
    """An e-mail address no validator accepts, made from a good one."""
    local, _, domain = email.partition("@")
    head, dot, tld = domain.rpartition(".")
    variants = [
        f"{local} at {domain}",
        f"{local}@@{domain}",
        f"{email}.",
        f"mailto:{email}",
        f"{local}@{head},{tld}" if dot else f"{local}@{domain},com",
        f"{local}@{domain.split('.')[0]}",
        f"<{email}>",
        f"{local} @{domain}",
    ]
    return rng.choice(variants)


def negative_quantity(rng: random.Random) -> Decimal:
    """A quantity below zero (an oversold quant, a mistyped quote line)."""
    return Decimal(-rng.randint(1, 25))


def unknown_sku(rng: random.Random) -> str:
    """A product code the ERP catalogue (``SKU-00001``...) does not contain."""
    variants = [
        f"SKU-9{rng.randrange(10000):04d}",
        f"XK-{rng.randint(100, 999)}-{rng.choice('ABCDEFGH')}",
        f"OLD-{rng.randint(1000, 9999)}",
        f"SKU{rng.randint(300, 999)}-X",
    ]
    return rng.choice(variants)


def _name_variant(rng: random.Random, name: str) -> str:
    words = name.split()
    variants = [name, name.upper(), f"{name} "]
    if len(words) > 1:
        variants.append(" ".join(words[:-1]))
        variants.append(" ".join([*words[:-1], words[-1].lower()]))
    return rng.choice(variants)


def duplicate_party(rng: random.Random, existing: PartyValues) -> PartyValues:
    """A second record of an existing customer: same VAT id and e-mail, the name re-typed.

    The address is kept, the phone number sometimes re-formatted; the point is a new row
    that a dedupe stage must recognise.
    """
    phone = existing.phone
    if phone is not None and rng.random() < 0.5:
        phone = bad_phone(rng, phone)
    return dataclasses.replace(existing, name=_name_variant(rng, existing.name), phone=phone)


_TEXT_FIELDS = ("name", "first_name", "last_name", "street", "city", "email", "industry")


def _spoil_changes(
    rng: random.Random, changes: dict[str, str | None], dirty: DirtyKind
) -> dict[str, str | None]:
    out = dict(changes)
    if dirty is DirtyKind.BAD_EMAIL and out.get("email"):
        out["email"] = bad_email(rng, str(out["email"]))
    elif dirty is DirtyKind.BAD_PHONE and out.get("phone"):
        out["phone"] = bad_phone(rng, str(out["phone"]))
    elif dirty is DirtyKind.MISSING_COUNTRY and "country" in out:
        out["country"] = None
    elif dirty in (DirtyKind.PADDING, DirtyKind.WRONG_CASE):
        candidates = [k for k in _TEXT_FIELDS if out.get(k)]
        if candidates:
            key = rng.choice(candidates)
            value = str(out[key])
            out[key] = pad(rng, value) if dirty is DirtyKind.PADDING else wrong_case(rng, value)
    return out


def apply_party_dirt(rng: random.Random, values: PartyValues, dirty: DirtyKind) -> PartyValues:
    """``values`` spoiled with one kind of dirt.

    ``DUPLICATE_CUSTOMER`` needs an existing record (see :func:`duplicate_party`) and the
    quantity/SKU kinds do not apply to parties; for those ``values`` is returned unchanged.
    """
    if dirty is DirtyKind.PADDING:
        name = pad(rng, values.name)
        city = pad(rng, values.city) if values.city and rng.random() < 0.5 else values.city
        return dataclasses.replace(values, name=name, city=city)
    if dirty is DirtyKind.WRONG_CASE:
        email = values.email.upper() if values.email and rng.random() < 0.5 else values.email
        return dataclasses.replace(values, name=wrong_case(rng, values.name), email=email)
    if dirty is DirtyKind.BAD_PHONE and values.phone:
        return dataclasses.replace(values, phone=bad_phone(rng, values.phone))
    if dirty is DirtyKind.BAD_EMAIL and values.email:
        return dataclasses.replace(values, email=bad_email(rng, values.email))
    if dirty is DirtyKind.MISSING_COUNTRY:
        return dataclasses.replace(values, country=None)
    return values


def apply_contact_dirt(
    rng: random.Random, values: ContactValues, dirty: DirtyKind
) -> ContactValues:
    """``values`` spoiled with one kind of text dirt; other kinds leave it unchanged."""
    if dirty is DirtyKind.PADDING:
        return dataclasses.replace(values, last_name=pad(rng, values.last_name))
    if dirty is DirtyKind.WRONG_CASE:
        return dataclasses.replace(values, last_name=wrong_case(rng, values.last_name))
    if dirty is DirtyKind.BAD_PHONE and values.phone:
        return dataclasses.replace(values, phone=bad_phone(rng, values.phone))
    if dirty is DirtyKind.BAD_EMAIL and values.email:
        return dataclasses.replace(values, email=bad_email(rng, values.email))
    return values
