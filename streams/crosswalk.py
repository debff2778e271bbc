"""The crosswalk: which ERP record is which CRM record, and how a new pair is found.

State is plain dicts, so a stream table can hold it and a test can write it out:

- :data:`CrosswalkState`: per entity, ERP id -> CRM id and CRM id -> ERP id. Links are
  one to one: linking an id that is already linked replaces the old link (and says
  which).
- :class:`CustomerIndex`: the ERP customers' match keys (normalised customer number,
  VAT id and e-mail), so a CRM account without a link can be matched to an existing
  ERP customer instead of creating a duplicate.

Matching precedence (:func:`match_customer`): an existing link, then the same customer
number, then the same VAT id, then the same e-mail. When a rule finds several ERP
customers (the ERP has duplicates), the later rules narrow them down; what remains is
reported as candidates and the lowest id is proposed, so the choice is deterministic
and visible. ERP customers already linked to another CRM account are never proposed.

Pure functions; the only mutation is of the state dicts passed in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, TypedDict

__all__ = [
    "MATCH_RULES",
    "CrosswalkState",
    "CustomerIndex",
    "CustomerMatch",
    "counterpart_id",
    "crm_id_for",
    "erp_id_for",
    "index_customer",
    "link",
    "match_customer",
    "match_keys",
    "new_crosswalk",
    "new_customer_index",
    "normalise_customer_number",
    "normalise_email",
    "normalise_vat",
    "remove_customer",
    "unlink",
]

CrosswalkState: TypeAlias = dict[str, dict[str, dict[str, str]]]
"""``{entity: {"erp": {erp_id: crm_id}, "crm": {crm_id: erp_id}}}``."""

MATCH_RULES: Final = ("customer_number", "vat", "email")
"""The match keys, strongest first."""

_CUSTOMER: Final = "customer"
_NOT_ALNUM: Final = re.compile(r"[^0-9A-Z]")
_SWISS_VAT_SUFFIX: Final = re.compile(r"(MWST|TVA|IVA)$")


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


def link(state: CrosswalkState, entity: str, erp_id: str, crm_id: str) -> list[tuple[str, str]]:
    """Link ``erp_id`` and ``crm_id`` of ``entity``; idempotent.

    Links are one to one: an earlier link of either id is removed first.

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
    """``' c00042 '`` -> ``'C00042'``; blank -> None."""
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip().upper()


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


_NORMALISERS: Final = {
    "customer_number": normalise_customer_number,
    "vat": normalise_vat,
    "email": normalise_email,
}


def match_keys(record: Mapping[str, Any]) -> dict[str, str]:
    """Return the normalised match keys of a canonical customer record (rule -> key)."""
    keys: dict[str, str] = {}
    for rule in MATCH_RULES:
        key = _NORMALISERS[rule](record.get(rule))
        if key is not None:
            keys[rule] = key
    return keys


# ------------------------------------------------------------------------ matching


class CustomerIndex(TypedDict):
    """The ERP customers' match keys.

    ``by_rule``: rule -> normalised key -> ERP ids (sorted); ``keys``: ERP id -> the keys
    it is indexed under, so a changed customer can be re-indexed.
    """

    by_rule: dict[str, dict[str, list[str]]]
    keys: dict[str, dict[str, str]]


@dataclass(frozen=True, slots=True)
class CustomerMatch:
    """The ERP customer proposed for a CRM account.

    Attributes:
        erp_id: the ERP customer.
        rule: what matched: ``crosswalk`` (already linked), ``customer_number``,
            ``vat`` or ``email``.
        candidates: every ERP customer the rule left (more than one: ambiguous; the
            lowest id was proposed).
    """

    erp_id: str
    rule: str
    candidates: tuple[str, ...] = ()

    @property
    def ambiguous(self) -> bool:
        """Whether more than one ERP customer fitted equally well."""
        return len(self.candidates) > 1


def new_customer_index() -> CustomerIndex:
    """Return an empty index."""
    return {"by_rule": {rule: {} for rule in MATCH_RULES}, "keys": {}}


def _id_order(erp_id: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order, then the rest."""
    return (0, int(erp_id), "") if erp_id.isdigit() else (1, 0, erp_id)


def remove_customer(index: CustomerIndex, erp_id: str) -> None:
    """Drop ``erp_id`` from the index (a deleted customer); unknown ids are ignored."""
    for rule, key in index["keys"].pop(erp_id, {}).items():
        ids = index["by_rule"][rule].get(key, [])
        if erp_id in ids:
            ids.remove(erp_id)
        if not ids:
            index["by_rule"][rule].pop(key, None)


def index_customer(index: CustomerIndex, erp_id: str, record: Mapping[str, Any]) -> None:
    """Index (or re-index) ERP customer ``erp_id`` under the match keys of ``record``."""
    remove_customer(index, erp_id)
    keys = match_keys(record)
    for rule, key in keys.items():
        ids = index["by_rule"].setdefault(rule, {}).setdefault(key, [])
        ids.append(erp_id)
        ids.sort(key=_id_order)
    if keys:
        index["keys"][erp_id] = keys


def match_customer(
    index: CustomerIndex,
    account: Mapping[str, Any],
    *,
    crosswalk: CrosswalkState | None = None,
    crm_id: str | None = None,
) -> CustomerMatch | None:
    """Propose the ERP customer a CRM account is, or None (it is new to the ERP).

    Args:
        index: the ERP customers' match keys.
        account: the account as a canonical customer record (``customer_number``,
            ``vat``, ``email``; cleansed or not, keys are normalised here).
        crosswalk: the links so far; with it, an account already linked returns its
            link, and ERP customers linked to another account are not proposed.
        crm_id: the account's CRM id (needed for the crosswalk checks).
    """
    if crosswalk is not None and crm_id is not None:
        linked = erp_id_for(crosswalk, _CUSTOMER, crm_id)
        if linked is not None:
            return CustomerMatch(linked, "crosswalk", (linked,))
    keys = match_keys(account)

    def candidates(rule: str) -> list[str]:
        found = index["by_rule"].get(rule, {}).get(keys[rule], []) if rule in keys else []
        if crosswalk is None:
            return list(found)
        return [
            erp_id for erp_id in found if crm_id_for(crosswalk, _CUSTOMER, erp_id) in (None, crm_id)
        ]

    for position, rule in enumerate(MATCH_RULES):
        found = candidates(rule)
        if not found:
            continue
        for later in MATCH_RULES[position + 1 :]:
            if len(found) == 1:
                break
            narrowed = [erp_id for erp_id in found if erp_id in candidates(later)]
            if narrowed:
                found = narrowed
        found.sort(key=_id_order)
        return CustomerMatch(found[0], rule, tuple(found))
    return None
