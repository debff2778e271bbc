"""Reference data: the crosswalk, both systems' customer index, duplicates, SKUs.

:class:`ReferenceData` is the in-memory mirror of the ``reference`` table that every
record may need. :class:`References` keeps it as entities pass: it links, indexes and
matches customers and links products by SKU, as state writes of the unit of work.

- **Crosswalk.** An ERP customer with ``crm_account_id`` is linked to that account,
  unless another live ERP customer holds it: a link is one to one
  (:func:`streams.crosswalk.link_holder`), so such a customer is held as a suspected
  duplicate of the account (``erp_column=<account>``) and never written into it (one
  linked to an account of its own keeps that one). Every refused link is counted and
  logged (:meth:`References.link`).
  Customers of both systems are indexed under their customer number, VAT id, e-mail and
  name + country (deleted and archived ones are dropped). A customer whose event carries
  no counterpart id (so it has no link) is matched against the other system's index
  (:func:`streams.crosswalk.resolve_customer`): matched with a free record, the two are
  linked and the event carries the other id; matched with a record linked to another
  one, it is a suspected duplicate: not linked, its event carries ``duplicate_of`` and
  ``duplicate_rule`` (the evidence, ``rule=normalised key``) so the sink holds it
  instead of creating a second copy, and the flag is kept (and repeated on later
  changes) until the record is linked. Records the sinks create come back linked: an
  ERP partner created for an account carries ``crm_account_id``, a CRM account created
  for a customer carries its customer number, the strongest rule. Until then, a
  customer published as new is *being created* in the other system (``new|customer|
  <system>|<id>``): it counts as linked, so the same customer typed into either system
  meanwhile is flagged, not linked to it nor created a second time (see
  :mod:`streams.crosswalk`). A customer whose event the other sink refuses stays
  marked: what matches it later is held for an operator, never linked or created. A
  held customer is taken as well: a record matching it is held too, not linked to it.
- **First sync.** Both systems often hold the same customers already, unlinked. A
  customer read by the initial snapshot that matches nothing in the other system is
  not published as new at once: it is indexed (free, so the other system's snapshot
  read of the same customer links to it) and waits for ``snapshot_settle``
  (:meth:`streams.waiting.Waiting.settle`); run again then, it goes out linked if it
  was matched meanwhile, else as new. Published at once, its counterpart read a moment
  later would have found it being created and been held: every pre-existing pair an
  operator's task. A snapshot customer is linked at once only by its link column
  (``crm_account_id``) or its customer number; one that matches by VAT id, e-mail or
  name, or only records already taken, settles the same way and is decided then. Its
  other system's snapshot may not have shown the records that claim it yet: the
  account carrying its customer number, or the ERP customer whose ``crm_account_id``
  names the account it matched. Linked at once, a copy left by an earlier run took a
  pair's account (its data and customer number written over the pair's) or made the
  sink write a customer number an unread account held (a unique-key dead letter).
- **Products** are linked by SKU, compared without regard to case or spacing
  (:func:`~streams.validation.identifier_key`).
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Any, Final

from schemas.mapping import Flow
from streams.crosswalk import (
    CrosswalkState,
    CustomerIndex,
    CustomerMatch,
    SuspectedDuplicate,
    claim_counterpart,
    crm_id_for,
    erp_id_for,
    index_customer,
    index_keys,
    link_holder,
    match_keys,
    new_crosswalk,
    new_customer_index,
    other_system,
    resolve_customer,
)
from streams.outcome import Count
from streams.state import REFERENCE, StateView
from streams.transform import INITIAL_SNAPSHOT, SOURCE_SNAPSHOT, CanonicalEvent
from streams.validation import identifier_key
from streams.work import UnitOfWork

__all__ = ["SURE_RULES", "ReferenceData", "References"]

SURE_RULES: Final = frozenset({"crosswalk", "customer_number"})
"""The match rules a snapshot customer is linked by at once (:meth:`References.customer`):
the link itself, and the customer number (an account carries its ERP customer's)."""


class ReferenceData:
    """The reference state every record may need, in memory; mirrors the ``reference`` table.

    Updated by :meth:`apply` with each reference write as it is made, rebuilt from the
    table by :meth:`load` (at start, and to undo writes that were not committed).
    """

    def __init__(self) -> None:
        self.crosswalk: CrosswalkState = new_crosswalk()
        self.customers: dict[str, CustomerIndex] = {
            "erp": new_customer_index(),
            "crm": new_customer_index(),
        }
        """Per system, its customers by match key."""
        self.duplicates: dict[str, dict[str, SuspectedDuplicate]] = {"erp": {}, "crm": {}}
        """Per system, its customers held as suspected duplicates."""
        self.creating: dict[str, set[str]] = {"erp": set(), "crm": set()}
        """Per system, its customers published as new whose counterpart is not linked yet."""
        self.legacy_index: set[str] = set()
        """ERP ids still indexed under an older store's ``cidx|<erp id>`` key."""
        self.skus: dict[str, str] = {}
        """ERP product id -> SKU (the ``erp_product_sku`` lookup)."""
        self.products_by_sku: dict[str, str] = {}
        """SKU (:func:`~streams.validation.identifier_key`) -> ERP product id (the ERP
        catalogue, for ``known_sku``)."""
        self.crm_products_by_sku: dict[str, str] = {}
        """SKU (:func:`~streams.validation.identifier_key`) -> CRM product id."""
        self.crm_skus: dict[str, str] = {}
        """CRM product id -> SKU as entered (the ``crm_product_sku`` lookup)."""
        self.generation = 0
        """Counts the writes that changed the crosswalk, the lookups or the SKUs: what a
        record mapped before would map to differently can have changed only if it moved."""

    @classmethod
    def load(cls, state: StateView) -> ReferenceData:
        """Build the caches from the ``reference`` table."""
        data = cls()
        for key, value in state.scan(REFERENCE, ""):
            data.apply(key, value)
        return data

    @property
    def lookups(self) -> Mapping[str, Mapping[str, str]]:
        """Lookup tables for :func:`~streams.transform.to_canonical`."""
        return {"erp_product_sku": self.skus, "crm_product_sku": self.crm_skus}

    @property
    def known_skus(self) -> Container[str]:
        """The SKUs of the ERP catalogue, by :func:`~streams.validation.identifier_key`."""
        return self.products_by_sku

    def apply(self, key: str, value: Any) -> None:
        """Mirror one write of the ``reference`` table (``value`` None: deleted)."""
        kind, _, rest = key.partition("|")
        if kind == "xw":
            entity, side, entity_id = rest.split("|", 2)
            sides = self.crosswalk.setdefault(entity, {"erp": {}, "crm": {}})
            linked = None if value is None else str(value)
            if sides[side].get(entity_id) != linked:
                self.generation += 1
            if linked is None:
                sides[side].pop(entity_id, None)
            else:
                sides[side][entity_id] = linked
        elif kind == "cidx":
            self._apply_index(rest, value)
        elif kind == "dup":
            _, system, entity_id = rest.split("|", 2)
            if value is None:
                self.duplicates[system].pop(entity_id, None)
            else:
                self.duplicates[system][entity_id] = SuspectedDuplicate(
                    str(value[0]), str(value[1])
                )
        elif kind == "new":
            _, system, entity_id = rest.split("|", 2)
            if value is None:
                self.creating[system].discard(entity_id)
            else:
                self.creating[system].add(entity_id)
        elif kind == "sku":
            self.generation += 1
            _set_both_ways(self.skus, self.products_by_sku, rest, value, fold_inverse=True)
        elif kind == "crmsku":
            self.generation += 1
            _set_both_ways(self.crm_products_by_sku, self.crm_skus, rest, value, fold_key=True)

    def _apply_index(self, rest: str, value: Any) -> None:
        system, _, entity_id = rest.partition("|")
        if system in self.customers and entity_id:
            index_customer(self.customers[system], entity_id, value or {})
            return
        # An older store's ``cidx|<erp id>``: an ERP customer's keys. Scanned before the
        # ``cidx|erp|`` keys (digits sort first), so a newer entry wins; it is deleted
        # only together with a write of the newer key, which keeps the index as it is.
        if value is None:
            self.legacy_index.discard(rest)
            return
        self.legacy_index.add(rest)
        index_customer(self.customers["erp"], rest, _legacy_keys(value))


def _set_both_ways(
    forward: dict[str, str],
    inverse: dict[str, str],
    key: str,
    value: Any,
    *,
    fold_key: bool = False,
    fold_inverse: bool = False,
) -> None:
    """Set (None: remove) ``forward[key]`` and keep ``inverse`` its inverse.

    A SKU is indexed by :func:`~streams.validation.identifier_key`: ``fold_key`` when
    ``key`` is the SKU, ``fold_inverse`` when ``value`` is; the other side keeps it as
    entered.
    """
    at = identifier_key(key) if fold_key else key
    old = forward.pop(at, None)
    if old is not None:
        back = identifier_key(old) if fold_inverse else old
        if inverse.get(back) == key:
            del inverse[back]
    if value is not None:
        forward[at] = str(value)
        inverse[identifier_key(str(value)) if fold_inverse else str(value)] = key


def _legacy_keys(value: Mapping[str, Any]) -> dict[str, str]:
    """An older index entry's keys (customer number, VAT id, e-mail; no name + country)."""
    return {
        rule: str(key) for rule, key in value.items() if rule in ("customer_number", "vat", "email")
    }


# ------------------------------------------------------------------- internals


class References:
    """Keeps the reference data as entities pass (see the module docstring)."""

    def __init__(self) -> None:
        self.data = ReferenceData()

    def load(self, state: StateView) -> None:
        """Rebuild the in-memory reference data from ``state``."""
        self.data = ReferenceData.load(state)

    def mirror(self, key: str, value: Any) -> None:
        """Mirror one write of the ``reference`` table."""
        self.data.apply(key, value)

    def observe(
        self, work: UnitOfWork, flow: Flow, event: CanonicalEvent, *, may_settle: bool = False
    ) -> bool:
        """Keep the references an entity's event carries (customers, products).

        Returns True when the event is a snapshot customer to settle before it is
        published (only if ``may_settle``; see :meth:`customer`).
        """
        if event.entity == "customer":
            return self.customer(work, flow, event, may_settle=may_settle)
        if event.entity == "product":
            self.product(work, flow, event)
        return False

    def link(
        self,
        work: UnitOfWork,
        entity: str,
        erp_id: str,
        crm_id: str,
        rule: str,
        *,
        source: str,
    ) -> str | None:
        """Link two ids one to one (as :func:`streams.crosswalk.link`), as state writes.

        ``source``: the system of the record taking the link. A counterpart another live
        record of that system holds (:func:`streams.crosswalk.link_holder`) is never
        taken: nothing is written, the refusal is counted
        (:attr:`~streams.outcome.Count.LINK_CONFLICTS`, per entity, system and rule) and
        logged as a warning, and the holder is returned for the caller to decide the
        record (held as a suspected duplicate, or left without the link). A
        suspected-duplicate flag of either id ends with a link.

        Returns:
            None: linked (or linked already); else the id of the record holding it.
        """
        crosswalk = self.data.crosswalk
        old_crm = crm_id_for(crosswalk, entity, erp_id)
        if old_crm == crm_id:
            return None
        record_id, other_id = (erp_id, crm_id) if source == "erp" else (crm_id, erp_id)
        holder = link_holder(
            crosswalk, entity, source, record_id, other_id, live=self._live(entity, source)
        )
        if holder is not None:
            work.tally.add(Count.LINK_CONFLICTS, entity, source, rule)
            other = other_system(source)
            work.warn(
                f"crosswalk: {entity} {source}:{record_id} names {other}:{other_id} "
                f"({rule}), which is linked to {source}:{holder}; not linked (a link is "
                "one to one)"
            )
            return holder
        old_erp = erp_id_for(crosswalk, entity, crm_id)
        if old_crm is not None:
            work.put(REFERENCE, f"xw|{entity}|crm|{old_crm}", None)
        if old_erp is not None:
            work.put(REFERENCE, f"xw|{entity}|erp|{old_erp}", None)
        work.put(REFERENCE, f"xw|{entity}|erp|{erp_id}", crm_id)
        work.put(REFERENCE, f"xw|{entity}|crm|{crm_id}", erp_id)
        if entity == "customer":
            for system, entity_id in (("erp", erp_id), ("crm", crm_id)):
                self.flag(work, system, entity_id, None)
                self.mark_creating(work, system, entity_id, False)
        work.tally.add(Count.LINKS, entity, rule)
        return None

    def _live(self, entity: str, system: str) -> Container[str] | None:
        """The records of ``system`` that hold their links (None: every one does).

        A customer counts while it is indexed (not deleted nor archived): one gone gives
        its counterpart up, so a survivor of a merge in the source may take it.
        """
        return self.data.customers[system]["keys"] if entity == "customer" else None

    def flag(
        self, work: UnitOfWork, system: str, entity_id: str, flag: SuspectedDuplicate | None
    ) -> None:
        """Record (or, with None, clear) a customer's suspected-duplicate flag."""
        if self.data.duplicates[system].get(entity_id) == flag:
            return
        value = None if flag is None else [flag.of, flag.evidence]
        work.put(REFERENCE, f"dup|customer|{system}|{entity_id}", value)

    def mark_creating(self, work: UnitOfWork, system: str, entity_id: str, on: bool) -> None:
        """Record (or clear) that a customer is being created in the other system."""
        if (entity_id in self.data.creating[system]) == on:
            return
        work.put(REFERENCE, f"new|customer|{system}|{entity_id}", True if on else None)

    def index_customer(
        self, work: UnitOfWork, system: str, entity_id: str, keys: dict[str, str]
    ) -> None:
        """Keep a customer's index entry at ``keys`` (empty: not indexed)."""
        ref = self.data
        if system == "erp" and entity_id in ref.legacy_index:
            work.put(REFERENCE, f"cidx|{entity_id}", None)
        elif ref.customers[system]["keys"].get(entity_id, {}) == keys:
            return
        work.put(REFERENCE, f"cidx|{system}|{entity_id}", keys or None)

    def customer(
        self, work: UnitOfWork, flow: Flow, event: CanonicalEvent, *, may_settle: bool = False
    ) -> bool:
        """Link, index and match a customer record; see the module docstring.

        1. an ERP customer's ``crm_account_id`` links it; 2. the record is (re-)indexed
        under its keys, or dropped from its index when deleted or archived; 3. a
        record without a counterpart is resolved against the other system's index:
        linked, flagged as a suspected duplicate, or left new (and being created).

        Returns True for a record read by the initial snapshot when ``may_settle``,
        unless it is linked by :data:`SURE_RULES` (its link column, its customer
        number): it is indexed but neither linked, flagged nor marked as being created,
        and must not be published now (the caller holds it to settle, then runs it again
        without ``may_settle``).
        """
        record = event.record
        system = flow.system
        own_id = str(record[flow.id_field])
        deleted = record["op"] == "delete"
        ref = self.data
        # worked out once: indexing and matching use them (a delete is neither)
        matched_by = None if deleted else match_keys(record)
        keys = index_keys(record, matched_by)
        self.index_customer(work, system, own_id, keys)
        if not keys:  # deleted or archived: nobody's match, nothing being created
            self.mark_creating(work, system, own_id, False)
        flagged = ref.duplicates[system].get(own_id)
        if system == "erp" and not deleted and record.get("crm_id"):
            named = str(record["crm_id"])
            if self.link(work, "customer", own_id, named, "erp_column", source=system):
                return self._claimed(work, flow, event, named, flagged)
        if deleted or record.get(flow.other_id_field):
            self.flag(work, system, own_id, None)
            return False
        found = resolve_customer(
            ref.customers[other_system(system)],
            record,
            system=system,
            record_id=own_id,
            crosswalk=ref.crosswalk,
            flagged=flagged,
            own_index=ref.customers[system],
            creating=ref.creating,
            held=ref.duplicates,
            keys=matched_by,
        )
        sure = isinstance(found, CustomerMatch) and found.rule in SURE_RULES
        if may_settle and keys and record.get(SOURCE_SNAPSHOT) in INITIAL_SNAPSHOT and not sure:
            return True
        if isinstance(found, CustomerMatch):
            erp_id, crm_id = (
                (own_id, found.other_id) if system == "erp" else (found.other_id, own_id)
            )
            if self.link(work, "customer", erp_id, crm_id, found.rule, source=system):
                # never, as matching skips held records; if it were, still no link
                found = SuspectedDuplicate(found.other_id, found.evidence)
            else:
                if found.ambiguous:
                    work.tally.add(Count.AMBIGUOUS, "customer")
                record[flow.other_id_field] = found.other_id
        if isinstance(found, SuspectedDuplicate):
            self._hold(work, flow, event, found, flagged)
        elif found is None and keys:
            self.mark_creating(work, system, own_id, True)
        return False

    def _claimed(
        self,
        work: UnitOfWork,
        flow: Flow,
        event: CanonicalEvent,
        named: str,
        flagged: SuspectedDuplicate | None,
    ) -> bool:
        """An ERP customer whose link column names an account another customer holds.

        Its event never carries that account (its changes would be written over the
        other customer's). A customer linked to an account of its own keeps writing
        that one; any other is held as a suspected duplicate of the account it names
        (evidence ``erp_column=<account>``, or its earlier flag), for an operator. The
        refusal was counted and logged by :meth:`link`.
        """
        record = event.record
        own_id = str(record[flow.id_field])
        own = crm_id_for(self.data.crosswalk, "customer", own_id)
        record[flow.other_id_field] = own
        if own is None:
            claim = claim_counterpart(
                self.data.crosswalk,
                "customer",
                flow.system,
                own_id,
                named,
                "erp_column",
                live=self._live("customer", flow.system),
            )
            assert claim is not None  # link() refused it for the same reason
            self._hold(work, flow, event, claim, flagged)
        return False

    def _hold(
        self,
        work: UnitOfWork,
        flow: Flow,
        event: CanonicalEvent,
        found: SuspectedDuplicate,
        flagged: SuspectedDuplicate | None,
    ) -> None:
        """Send a customer out as a suspected duplicate (an earlier flag stays as it was)."""
        record = event.record
        flag = flagged or found
        record["duplicate_of"] = flag.of
        record["duplicate_rule"] = flag.evidence
        if flagged is None:
            work.tally.add(Count.DUPLICATES, "customer", flow.system, flag.rule)
        self.flag(work, flow.system, str(record[flow.id_field]), flag)

    def product(self, work: UnitOfWork, flow: Flow, event: CanonicalEvent) -> None:
        """Keep the SKU index and link products of both systems by SKU."""
        record = event.record
        sku = record.get("sku")
        ref = self.data
        if flow.system == "erp":
            erp_id = str(record["erp_id"])
            if record["op"] == "delete":
                if erp_id in ref.skus:
                    work.put(REFERENCE, f"sku|{erp_id}", None)
                return
            if sku is None:
                return
            if ref.skus.get(erp_id) != sku:
                work.put(REFERENCE, f"sku|{erp_id}", sku)
            crm_id = ref.crm_products_by_sku.get(identifier_key(sku))
            if (
                crm_id is not None
                and record.get("crm_id") is None
                and self.link(work, "product", erp_id, crm_id, "sku", source="erp") is None
            ):
                record["crm_id"] = crm_id
            return
        crm_id = str(record["crm_id"])
        if record["op"] == "delete" or sku is None:
            return
        if ref.crm_products_by_sku.get(identifier_key(sku)) != crm_id or (
            ref.crm_skus.get(crm_id) != sku
        ):
            work.put(REFERENCE, f"crmsku|{sku}", crm_id)
        catalogue_id = ref.products_by_sku.get(identifier_key(sku))
        if (
            catalogue_id is not None
            and record.get("erp_id") is None
            and self.link(work, "product", catalogue_id, crm_id, "sku", source="crm") is None
        ):
            record["erp_id"] = catalogue_id

    # -- stock ----------------------------------------------------------------------
