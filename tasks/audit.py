"""The audit against the partners' own records: `vip-bundles audit` and the beat task.

Both take bundle ids from the final-status indexes (scored by settle time) up to a moment
`until`, then read the partners' lists, then compare (process_manager/audit.py). A bundle's
partner effects all happen before it settles, so every bundle that settled by `until` has them
in lists read after `until`; a bundle whose status changed after `until` (cancelled since) is
left for the next audit rather than judged against lists older than its change.

Cost: each partner list is read once per audit, not once per bundle, and indexed in memory;
only for a handful of bundles does the audit send the lists' courtesy filters instead
(`AUDIT_FILTERED_CALLS`). Each bundle then costs one Redis read and a few dictionary lookups.
The beat task (`vip_bundle.audit`) keeps a cursor in Redis: each run audits the bundles settled
since the last one plus those settled within `AUDIT_WINDOW_S` (for drift that appears later),
and records each new finding once, as `LedgerDriftDetected_v1` on the bundle.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from adapters.finder import BundleFinder
from adapters.partners import PartnerBusy, Partners
from adapters.settings import get_settings
from adapters.store import BundleStore
from process_manager import saga
from process_manager.audit import UNDONE, Finding, PartnerRecords, findings
from process_manager.bundle import Bundle
from tasks.celery_app import app, partners, store
from tasks.steps import log

CHUNK = 1000  # bundle documents read from Redis per round trip


def partner_records(
    client: Partners, bundles: list[Bundle] | None, filtered_calls: int = 0
) -> PartnerRecords:
    """The partners' records `bundles` need: a few filtered calls, or each list once.

    `None` stands for bundles not known yet: every list, whole.
    """
    show_tickets = [t for b in bundles or [] if b.status in UNDONE for t in b.ticket_ids]
    if bundles is not None and len(bundles) + 2 * len(show_tickets) <= filtered_calls:
        tickets = [t for b in bundles for t in client.flight_tickets(b.vip_bundle_id)]
        refunds = [r for t in show_tickets for r in client.refunds(t)]
        receipts = [r for t in show_tickets for r in client.receipts(t)]
    else:
        tickets = client.flight_tickets()
        # Finalized bundles alone need only the flight tickets.
        payments = bundles is None or bool(show_tickets)
        refunds = client.refunds() if payments else []
        receipts = client.receipts() if payments else []
    return PartnerRecords.index(
        flight_tickets=[t.model_dump() for t in tickets],
        refunds=[r.model_dump() for r in refunds],
        receipts=[r.model_dump() for r in receipts],
    )


def audit(
    st: BundleStore | BundleFinder,
    client: Partners,
    ids: list[str],
    until: float,
    filtered_calls: int,
    chunk: int = CHUNK,
) -> Iterator[tuple[Bundle, list[Finding]]]:
    """Each audited bundle (settled by `until`) with its findings, in `ids` order."""
    first = st.many(ids[:chunk])
    if len(ids) <= chunk:
        records = partner_records(client, first, filtered_calls)
    else:
        records = partner_records(client, None)
    for start in range(0, len(ids), chunk):
        bundles = first if start == 0 else st.many(ids[start : start + chunk])
        for bundle in bundles:
            if bundle.status_since().timestamp() <= until:
                yield bundle, findings(bundle, records)


def record_drift(st: BundleStore, bundle: Bundle, found: list[Finding]) -> int:
    """Record each finding not yet on the bundle (one atomic write with its event each)."""
    new = 0
    current: Bundle | None = bundle
    for finding in found:
        applied = st.apply(
            bundle.vip_bundle_id, lambda b, f=finding: saga.drift_detected(b, f), current=current
        )
        current = applied.bundle
        if applied.event is not None:
            new += 1
            log.warning("ledger drift: %s: %s", bundle.vip_bundle_id, finding.description)
    return new


@dataclass
class AuditRun:
    checked: int = 0
    findings: int = 0
    new_findings: int = 0


@app.task(name="vip_bundle.audit", ignore_result=True)
def audit_recent() -> dict[str, int]:
    """One periodic pass: bundles settled since the cursor, plus the re-audit window."""
    s, st = get_settings(), store()
    until = time.time()
    window_start = until - s.audit_window_s
    cursor = st.audit_cursor()
    recheck = []
    if cursor is not None and cursor > window_start:
        recheck = st.settled(after=window_start, until=cursor, limit=s.audit_batch, newest=True)
    new = st.settled(
        after=window_start if cursor is None else cursor, until=until, limit=s.audit_batch
    )
    # A full batch leaves the rest for the next run, from where this one stopped.
    next_cursor = new[-1][1] if len(new) == s.audit_batch else until
    run = AuditRun()
    ids = [bundle_id for bundle_id, _ in recheck + new]
    try:
        for bundle, found in audit(st, partners(), ids, until, s.audit_filtered_calls):
            run.checked += 1
            run.findings += len(found)
            run.new_findings += record_drift(st, bundle, found)
    except PartnerBusy as busy:
        # A partner that asks us to wait is not hammered for an audit: the next run starts
        # from the same cursor (a finding is recorded once, so re-checking is harmless).
        log.info("audit: postponed, %s", busy)
        return vars(run)
    st.advance_audit_cursor(next_cursor)
    if run.findings:
        log.info("audit: %s", vars(run))
    return vars(run)
