"""The crosswalk: which ERP record is which CRM record, and how a new pair is found.

State is plain dicts, so a stream table can hold it and a test can write it out:

- :data:`CrosswalkState`: per entity, ERP id -> CRM id and CRM id -> ERP id. Links are
  one to one: linking an id that is already linked replaces the old link (and says
  which). A record of one system never takes a counterpart another live record of its
  system holds (:func:`link_holder`): that would write two source records into one
  target row, each change overwriting the other's. Only a holder that is gone (deleted,
  archived) gives its counterpart up; a record claiming a held one is refused (for a
  customer, a suspected duplicate of it, see :func:`claim_counterpart`).
- :class:`CustomerIndex`: one system's customers by their normalised match keys
  (customer number, VAT id, e-mail, name + country). Both systems have one, so a new
  record of either side is matched against the other side's customers.

Matching (:func:`match_customer`), for a record of one system against the other
system's index, strongest evidence first: an existing link; then the same customer
number, VAT id, e-mail, name + country (:data:`MATCH_RULES`). The first rule that finds
anyone decides. When it finds several records (a system holds duplicates), the later
rules narrow them down; of what remains, records not linked yet are preferred, then the
lowest id, so the choice is deterministic and visible (``candidates``). Records already
linked are found too: a match with one of them is a *suspected duplicate* (the new
record seems to be a second copy of a pair that is already synced), never a link.

A record published as new to the other system is *being created* there until the
record the other side's sink makes for it comes back and is linked. Meanwhile it counts
as linked (:func:`match_customer`'s ``creating``): the same customer typed into the
other system in the meantime is a suspected duplicate of it, never linked to it (its
counterpart is on its way, and would be a second record). A record held as a suspected
duplicate counts as linked too (``held``): it is a copy of a customer that is synced
already, and linking it would sync that customer twice. Only a match by customer number
is a record's counterpart coming back: the ERP gives the numbers, and an account the
CRM sink created carries its customer's. For the same reason a record carrying another
customer number than the record matched with it (by VAT id, e-mail or name) is taken
(``numbered``): an account with a number is the account of the ERP customer with that
number, and linking it to another one would write that one's number over it (taking a
pair's account, or a number another account holds). Of several candidates, free ones
are proposed first, then linked ones, then ones being created, then held ones, then
ones carrying another number.

What to do with a customer record (:func:`resolve_customer`): already linked -> keep
the link; matched with a free record -> link the two; matched with a linked one (or
one being created) -> hold it as a :class:`SuspectedDuplicate` (the other record's id
and the evidence ``rule=normalised key``); matched with nobody, but with a record of
its own system being created -> a suspected duplicate of that record's counterpart
(named ``<system>:<id>``, by the record being created: its id in the other system is
not known yet, and the sink finds it as the row it made for that record); matched with
nobody -> new to the other system. A record flagged once keeps that flag, the same
record and evidence, on later changes until it is linked (a sink's decision about a
held record refers to one pair, whatever the record is edited into meanwhile).

Deleted and archived records are not indexed (:func:`index_keys`), so they are never
proposed.

Pure functions; the only mutation is of the state dicts passed in.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, TypedDict

from streams.validation import identifier_key

__all__ = [
    "BEING_CREATED",
    "HELD",
    "LEGAL_FORMS",
    "MATCH_RULES",
    "NUMBERED",
    "CrosswalkState",
    "CustomerIndex",
    "CustomerMatch",
    "SuspectedDuplicate",
    "claim_counterpart",
    "counterpart_id",
    "crm_id_for",
    "erp_id_for",
    "index_customer",
    "index_keys",
    "link",
    "link_holder",
    "match_creating",
    "match_customer",
    "match_keys",
    "new_crosswalk",
    "new_customer_index",
    "normalise_customer_number",
    "normalise_email",
    "normalise_name",
    "normalise_name_country",
    "normalise_vat",
    "other_system",
    "remove_customer",
    "resolve_customer",
    "unlink",
]

CrosswalkState: TypeAlias = dict[str, dict[str, dict[str, str]]]
"""``{entity: {"erp": {erp_id: crm_id}, "crm": {crm_id: erp_id}}}``."""

MATCH_RULES: Final = ("customer_number", "vat", "email", "name_country")
"""The match keys, strongest first."""

LEGAL_FORMS: Final = frozenset(
    {
        "AB", "AG", "APS", "AS", "BV", "CO", "CORP", "GMBH", "INC", "KG", "KGAA", "LLC",
        "LLP", "LTD", "LIMITED", "NV", "OHG", "OY", "PLC", "SA", "SARL", "SAS", "SE", "SL",
        "SPA", "SRL", "UG",
    }
)  # fmt: skip
"""Legal-form words dropped from the end of a name (``GmbH & Co. KG``), never the first."""

BEING_CREATED: Final = "(being created)"
""":attr:`CustomerMatch.linked_to` of a record whose counterpart is being created."""
HELD: Final = "(held)"
""":attr:`CustomerMatch.linked_to` of a record held as a suspected duplicate."""
NUMBERED: Final = "(numbered)"
""":attr:`CustomerMatch.linked_to` of a record carrying another customer number than the
record matched with it (by a rule other than the customer number)."""

_CUSTOMER: Final = "customer"
_TAKEN: Final[dict[str | None, int]] = {None: 0, BEING_CREATED: 2, HELD: 3, NUMBERED: 4}
"""The order candidates are proposed in: free, linked (any other id: 1), being created, held,
carrying another customer number."""
_SYSTEMS: Final = ("erp", "crm")
_NOT_ALNUM: Final = re.compile(r"[^0-9A-Z]")
_SWISS_VAT_SUFFIX: Final = re.compile(r"(MWST|TVA|IVA)$")
_WORD: Final = re.compile(r"[^\W_]+")
_JOINERS: Final = re.compile(r"[.'\u2019]")
"""Dropped inside words: ``G.m.b.H.`` is ``GmbH``, ``O'Neil`` is ``ONeil``."""


def other_system(system: str) -> str:
    """``erp`` -> ``crm`` and ``crm`` -> ``erp``.

    Raises:
        ValueError: ``system`` is neither.
    """
    if system not in _SYSTEMS:
        raise ValueError(f"unknown system {system!r}")
    return "crm" if system == "erp" else "erp"


# ------------------------------------------------------------------------- links


def new_crosswalk() -> CrosswalkState:
    """Return an empty crosswalk."""
    return {}


def _sides(state: CrosswalkState, entity: str) -> dict[str, dict[str, str]]:
    return state.setdefault(entity, {"erp": {}, "crm": {}})


def crm_id_for(state: CrosswalkState, entity: str, erp_id: str) -> str | None:
    """Return the CRM id linked to ``entity``'s ``erp_id``, or None."""
    return state.get(entity, {}).get("erp", {}).get(erp_id)


def erp_id_for(state: CrosswalkState, entity: str, crm_id: str) -> str | None:
    """Return the ERP id linked to ``entity``'s ``crm_id``, or None."""
    return state.get(entity, {}).get("crm", {}).get(crm_id)


def counterpart_id(state: CrosswalkState, entity: str, system: str, source_id: str) -> str | None:
    """Return the id in the other system of ``entity`` ``source_id`` of ``system`` (erp|crm)."""
    if system == "erp":
        return crm_id_for(state, entity, source_id)
    return erp_id_for(state, entity, source_id)


def unlink(
    state: CrosswalkState, entity: str, *, erp_id: str | None = None, crm_id: str | None = None
) -> tuple[str, str] | None:
    """Remove the link of ``erp_id`` or ``crm_id``; return the removed ``(erp_id, crm_id)``."""
    sides = state.get(entity)
    if sides is None:
        return None
    if erp_id is None and crm_id is not None:
        erp_id = sides["crm"].get(crm_id)
    if erp_id is None or erp_id not in sides["erp"]:
        return None
    linked = sides["erp"].pop(erp_id)
    sides["crm"].pop(linked, None)
    return erp_id, linked


def link_holder(
    state: CrosswalkState,
    entity: str,
    system: str,
    record_id: str,
    other_id: str,
    *,
    live: Container[str] | None = None,
) -> str | None:
    """The record of ``system`` that holds ``other_id`` (of the other system), if not ``record_id``.

    A link is one to one: ``record_id`` may be linked to ``other_id`` only while no other
    record of its own system is. ``live``: the ids of ``system``'s records that still
    count; a holder not among them (deleted, archived) gives its counterpart up. None:
    every holder counts.

    Returns:
        The holder's id: ``record_id`` must not be linked to ``other_id``. None:
        ``other_id`` is free, ``record_id``'s own counterpart, or held by a record gone.
    """
    holder = counterpart_id(state, entity, other_system(system), other_id)
    if holder is None or holder == record_id or (live is not None and holder not in live):
        return None
    return holder


def claim_counterpart(
    state: CrosswalkState,
    entity: str,
    system: str,
    record_id: str,
    other_id: str,
    rule: str,
    *,
    live: Container[str] | None = None,
) -> SuspectedDuplicate | None:
    """Whether ``record_id`` of ``system`` may take ``other_id`` as its counterpart.

    ``rule``: what names ``other_id`` (``erp_column``: the ERP customer's link column).
    None: it may (see :func:`link_holder`, ``live`` as there). Else the record is a
    suspected duplicate of ``other_id``, with the evidence ``rule=other_id``: another
    live record of its system holds ``other_id``, and linking would write both into one
    target row.
    """
    if link_holder(state, entity, system, record_id, other_id, live=live) is None:
        return None
    return SuspectedDuplicate(other_id, f"{rule}={other_id}")


def link(state: CrosswalkState, entity: str, erp_id: str, crm_id: str) -> list[tuple[str, str]]:
    """Link ``erp_id`` and ``crm_id`` of ``entity``; idempotent.

    Links are one to one: an earlier link of either id is removed first (callers ask
    :func:`link_holder` before they take another record's counterpart).

    Returns:
        The links replaced, as ``(erp_id, crm_id)`` pairs (empty when nothing changed
        or neither id was linked).
    """
    if crm_id_for(state, entity, erp_id) == crm_id:
        return []
    replaced = [
        pair
        for pair in (unlink(state, entity, erp_id=erp_id), unlink(state, entity, crm_id=crm_id))
        if pair is not None
    ]
    sides = _sides(state, entity)
    sides["erp"][erp_id] = crm_id
    sides["crm"][crm_id] = erp_id
    return replaced


# ---------------------------------------------------------------------- match keys


def normalise_customer_number(value: object) -> str | None:
    """``' c 00042 '`` -> ``'C00042'`` (see :func:`.identifier_key`); blank -> None."""
    if not isinstance(value, str) or not value.strip():
        return None
    return identifier_key(value)


def normalise_vat(value: object) -> str | None:
    """A VAT id reduced to upper-case letters and digits: ``'de 123.456-789'`` -> ``'DE123456789'``.

    The Swiss suffix (``MWST``/``TVA``/``IVA``) is dropped, since the same company
    writes it in the language of the day. Blank -> None.
    """
    if not isinstance(value, str):
        return None
    compact = _NOT_ALNUM.sub("", value.upper())
    if compact.startswith("CHE"):
        compact = _SWISS_VAT_SUFFIX.sub("", compact)
    return compact or None


def normalise_email(value: object) -> str | None:
    """An e-mail address trimmed and lower-cased (for comparison only); None if not one."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    return text if text.count("@") == 1 and not text.startswith("@") else None


def normalise_name(value: object) -> str | None:
    """A company name as words for comparison: ``'Müller & Söhne GmbH'`` -> ``'MULLER SOHNE'``.

    Accents are stripped (Unicode NFKD without combining marks), case is folded
    (``ß`` -> ``SS``), dots and apostrophes vanish inside words, every other run of
    punctuation or white space separates words, and legal forms (:data:`LEGAL_FORMS`)
    are dropped from the end while a word remains. Letters without a decomposition
    (``ø``, ``ł``) are kept as they are. Blank -> None.
    """
    if not isinstance(value, str):
        return None
    decomposed = unicodedata.normalize("NFKD", value)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    words = [w.upper() for w in _WORD.findall(_JOINERS.sub("", bare).casefold())]
    while len(words) > 1 and words[-1] in LEGAL_FORMS:
        words.pop()
    return " ".join(words) or None


def normalise_name_country(name: object, country: object) -> str | None:
    """``normalised name|COUNTRY`` (``'MULLER SOHNE|DE'``); None without either part."""
    normalised = normalise_name(name)
    if normalised is None or not isinstance(country, str) or not country.strip():
        return None
    return f"{normalised}|{country.strip().upper()}"


def match_keys(record: Mapping[str, Any]) -> dict[str, str]:
    """Return the normalised match keys of a canonical customer record (rule -> key).

    ``customer_number``, ``vat`` and ``email`` from the fields of those names,
    ``name_country`` from ``name`` and ``country_code``; a rule without a usable value
    is left out.
    """
    found = {
        "customer_number": normalise_customer_number(record.get("customer_number")),
        "vat": normalise_vat(record.get("vat")),
        "email": normalise_email(record.get("email")),
        "name_country": normalise_name_country(record.get("name"), record.get("country_code")),
    }
    return {rule: key for rule, key in found.items() if key is not None}


def index_keys(record: Mapping[str, Any], keys: Mapping[str, str] | None = None) -> dict[str, str]:
    """The keys to index a customer record under: none if deleted or archived.

    A deleted record (``op`` ``delete``) or an archived one (``active`` false) is
    nobody's match any more; otherwise :func:`match_keys` (``keys``: those, worked out
    already).
    """
    if record.get("op") == "delete" or record.get("active") is False:
        return {}
    return dict(keys) if keys is not None else match_keys(record)


# ------------------------------------------------------------------------- index


class CustomerIndex(TypedDict):
    """One system's customers by match key.

    ``by_rule``: rule -> normalised key -> ids (sorted, :func:`_id_order`); ``keys``:
    id -> the keys it is indexed under, so a changed customer can be re-indexed.
    """

    by_rule: dict[str, dict[str, list[str]]]
    keys: dict[str, dict[str, str]]


def new_customer_index() -> CustomerIndex:
    """Return an empty index."""
    return {"by_rule": {rule: {} for rule in MATCH_RULES}, "keys": {}}


def _id_order(record_id: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order, then the rest (CRM UUIDs) in text order."""
    return (0, int(record_id), "") if record_id.isdigit() else (1, 0, record_id)


def remove_customer(index: CustomerIndex, record_id: str) -> None:
    """Drop ``record_id`` from the index (deleted, archived); unknown ids are ignored."""
    for rule, key in index["keys"].pop(record_id, {}).items():
        ids = index["by_rule"].get(rule, {}).get(key, [])
        if record_id in ids:
            ids.remove(record_id)
        if not ids:
            index["by_rule"].get(rule, {}).pop(key, None)


def index_customer(index: CustomerIndex, record_id: str, keys: Mapping[str, str]) -> None:
    """Index (or re-index) ``record_id`` under ``keys`` (rule -> normalised key).

    ``keys`` as :func:`index_keys` gives them; empty keys drop the record.
    """
    remove_customer(index, record_id)
    for rule, key in keys.items():
        ids = index["by_rule"].setdefault(rule, {}).setdefault(key, [])
        ids.append(record_id)
        ids.sort(key=_id_order)
    if keys:
        index["keys"][record_id] = dict(keys)


# ------------------------------------------------------------------------ matching


@dataclass(frozen=True, slots=True)
class CustomerMatch:
    """The record of the other system a customer record was matched with.

    Attributes:
        other_id: the matched record, in the other system.
        rule: what matched: ``crosswalk`` (already linked), or one of
            :data:`MATCH_RULES`.
        candidates: every record the rule left after narrowing, free ones first (more
            than one: ambiguous; the first was proposed).
        key: the normalised key that matched (None for ``crosswalk``).
        linked_to: the record ``other_id`` is already linked to, in the matched
            record's system (:data:`BEING_CREATED`: its counterpart is being created);
            None: ``other_id`` is free.
    """

    other_id: str
    rule: str
    candidates: tuple[str, ...] = ()
    key: str | None = None
    linked_to: str | None = None

    @property
    def ambiguous(self) -> bool:
        """Whether more than one record fitted equally well."""
        return len(self.candidates) > 1

    @property
    def duplicate(self) -> bool:
        """Whether the matched record is linked to another one (a suspected duplicate)."""
        return self.linked_to is not None

    @property
    def evidence(self) -> str:
        """``rule=normalised key`` (``vat=FR21945643978``); ``crosswalk`` for a link."""
        return self.rule if self.key is None else f"{self.rule}={self.key}"


@dataclass(frozen=True, slots=True)
class SuspectedDuplicate:
    """A new record that seems to be a second copy of an already linked record.

    Attributes:
        of: the linked record it matched, in the other system; or ``<system>:<id>``,
            a record of its own system being created in the other one (the sink finds
            the row it made for that record).
        evidence: ``rule=normalised key`` (``vat=FR21945643978``,
            ``name_country=MULLER SOHNE|DE``).
    """

    of: str
    evidence: str

    @property
    def rule(self) -> str:
        """The match rule of the evidence."""
        return self.evidence.partition("=")[0]


def match_customer(
    index: CustomerIndex,
    record: Mapping[str, Any],
    *,
    system: str,
    record_id: str | None = None,
    crosswalk: CrosswalkState | None = None,
    creating: Container[str] = (),
    held: Container[str] = (),
    keys: Mapping[str, str] | None = None,
) -> CustomerMatch | None:
    """Propose the record of the other system that a customer record is, or None.

    Args:
        index: the *other* system's customers.
        record: the record as a canonical customer (``customer_number``, ``vat``,
            ``email``, ``name``, ``country_code``; cleansed or not, keys are
            normalised here).
        system: the record's own system (``erp`` or ``crm``).
        record_id: the record's id in ``system`` (for the crosswalk checks).
        crosswalk: the links so far. With it, a record already linked returns its link
            (rule ``crosswalk``), and a match with a record linked to another one has
            ``linked_to`` set (a suspected duplicate, never a link). Without it, every
            match is free.
        creating: ids of the other system's records being created in ``system``
            (published as new, their counterpart not linked yet): a match with one has
            ``linked_to`` :data:`BEING_CREATED`, except by customer number (that is the
            counterpart itself coming back).
        held: ids of the other system's records held as suspected duplicates: a match
            with one has ``linked_to`` :data:`HELD`, except by customer number.
        keys: the record's :func:`match_keys`, if worked out already.

    A free record whose customer number differs from the record's (both have one) has
    ``linked_to`` :data:`NUMBERED`: another customer's record, never a link.

    Returns:
        The match (see the module docstring for the precedence), or None: nothing
        matches, the record is new to the other system.
    """
    other = other_system(system)
    if crosswalk is not None and record_id is not None:
        linked = counterpart_id(crosswalk, _CUSTOMER, system, record_id)
        if linked is not None:
            return CustomerMatch(linked, "crosswalk", (linked,))
    if keys is None:
        keys = match_keys(record)
    number = keys.get("customer_number")

    def found(rule: str) -> list[str]:
        return list(index["by_rule"].get(rule, {}).get(keys[rule], [])) if rule in keys else []

    def owner(other_id: str, rule: str) -> str | None:
        linked = None
        if crosswalk is not None:
            linked = counterpart_id(crosswalk, _CUSTOMER, other, other_id)
        if linked is None and rule != "customer_number":
            if other_id in creating:
                return BEING_CREATED
            if other_id in held:
                return HELD
            theirs = index["keys"].get(other_id, {}).get("customer_number")
            if number is not None and theirs is not None and theirs != number:
                return NUMBERED
        return None if linked == record_id else linked

    for position, rule in enumerate(MATCH_RULES):
        candidates = _narrowed(found, position)
        if not candidates:
            continue
        owners = {c: owner(c, rule) for c in candidates}
        candidates.sort(key=lambda c: (_TAKEN.get(owners[c], 1), _id_order(c)))
        first = candidates[0]
        return CustomerMatch(first, rule, tuple(candidates), keys[rule], owners[first])
    return None


def _narrowed(found: Callable[[str], list[str]], position: int) -> list[str]:
    """The ids the rule at ``position`` finds, narrowed by the later rules (see above)."""
    candidates = found(MATCH_RULES[position])
    for later in MATCH_RULES[position + 1 :]:
        if len(candidates) <= 1:
            break
        also = set(found(later))
        narrowed = [c for c in candidates if c in also]
        if narrowed:
            candidates = narrowed
    return candidates


def match_creating(
    own_index: CustomerIndex,
    record: Mapping[str, Any],
    *,
    record_id: str,
    creating: Container[str],
    keys: Mapping[str, str] | None = None,
) -> CustomerMatch | None:
    """The record of the same system, being created in the other one, that ``record`` copies.

    ``record`` is matched against its own system's customers (``own_index``), by the
    same rules and precedence as :func:`match_customer`, but only records being created
    (``creating``) other than itself count: the same customer typed twice before the
    first copy's counterpart came back. None: there is no such record. ``keys``: the
    record's :func:`match_keys`, if worked out already.
    """
    if keys is None:
        keys = match_keys(record)

    def found(rule: str) -> list[str]:
        ids = own_index["by_rule"].get(rule, {}).get(keys[rule], []) if rule in keys else []
        return [i for i in ids if i != record_id and i in creating]

    for position, rule in enumerate(MATCH_RULES):
        candidates = _narrowed(found, position)
        if candidates:
            return CustomerMatch(candidates[0], rule, tuple(candidates), keys[rule], BEING_CREATED)
    return None


def resolve_customer(
    index: CustomerIndex,
    record: Mapping[str, Any],
    *,
    system: str,
    record_id: str,
    crosswalk: CrosswalkState,
    flagged: SuspectedDuplicate | None = None,
    own_index: CustomerIndex | None = None,
    creating: Mapping[str, Container[str]] | None = None,
    held: Mapping[str, Container[str]] | None = None,
    keys: Mapping[str, str] | None = None,
) -> CustomerMatch | SuspectedDuplicate | None:
    """Decide what a customer record is on the other side.

    Args:
        index, record, system, record_id, crosswalk: as for :func:`match_customer`.
        flagged: the record's earlier flag, if it was held as a suspected duplicate.
        own_index: the record's own system's customers (for :func:`match_creating`).
        creating: per system, its records being created in the other one.
        held: per system, its records held as suspected duplicates.
        keys: the record's :func:`match_keys`, if worked out already (they are the same
            for every match tried).

    Returns:
        A :class:`CustomerMatch` of a free record (or of the record's own link, rule
        ``crosswalk``): link the two. A :class:`SuspectedDuplicate`: ``flagged``, as it
        was, if the record was flagged before (the flag stays until the record is
        linked), else the record matches a record linked to another one, being
        created, held or carrying another customer number (with the evidence), else it
        copies a record of its own system being created (``of`` is ``<system>:<id>`` of
        that record). None: the record is new to the other system.

    Never a match with a record linked to another one, being created, held or carrying
    another customer number, and never a duplicate of the record's own counterpart (a
    linked record returns its link).
    """
    creating = creating or {}
    other = other_system(system)
    match = match_customer(
        index,
        record,
        system=system,
        record_id=record_id,
        crosswalk=crosswalk,
        creating=creating.get(other, ()),
        held=(held or {}).get(other, ()),
        keys=keys,
    )
    if match is not None and not match.duplicate:
        return match
    if flagged is not None:
        return flagged
    if match is not None:
        return SuspectedDuplicate(match.other_id, match.evidence)
    if own_index is None:
        return None
    twin = match_creating(
        own_index, record, record_id=record_id, creating=creating.get(system, ()), keys=keys
    )
    return None if twin is None else SuspectedDuplicate(f"{system}:{twin.other_id}", twin.evidence)
