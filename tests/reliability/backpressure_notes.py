"""What docs/reliability.md says about the back-pressure scenarios (issue 24) beyond their
numbers; report.py merges it with the other scenarios' notes."""

from __future__ import annotations

NOTES_BACKPRESSURE: dict[str, str] = {
    "4-outage-threads": (
        "Payments answer 503 with no `Retry-After`. The undos' first failures open the payments "
        "circuit for the whole fleet (`adapters/partner_gate.py`): from then on no process "
        "calls payments but one probe per interval (1 s, doubling up to 10 s: *probes*), and "
        "the undos wait in the delayed queue (`rolling_back`: undos never give up) rather than "
        "in threads or in a retry storm. Bundles that need no refund finalize meanwhile. Once "
        "payments answer, the next probe closes the circuit and the releaser sends the waiting "
        "undos; each bundle ends `failed` with one refund per ticket. *payment calls a second*: "
        "from the simulator's log; the first second holds the calls made before the circuit "
        "learnt of the outage (five failures in a row open it, and calls already under way "
        "fail too). *parked on the way*: bundles an undo parked before the circuit opened "
        "(beat took them up). Before issue 24 these bundles parked in `compensation_failed` "
        "and beat retried them: 160 calls in 20 s, rolled back 27 s after payments returned."
    ),
    "13-throttled-threads": (
        "The airline answers every call 429 + `Retry-After: 2` for 10 s. A 429 is not "
        "processed: the fleet's \"not before\" is set, the step's bundle waits in the airline's "
        "delayed queue (the task ends, no thread sleeps) and a releaser takes it up when due, "
        "with the same idempotency key. No attempt is burnt (*step failures*) and the "
        "reconciler heals nothing (*reconciled*). *settled*: each bundle's last transition "
        "after the first send. Before issue 24: 20 of 20 not finalized 60 s later."
    ),
    "13-quota-threads": (
        "The airline refuses (429 + `Retry-After: 1`) past 10 calls in any sliding second, and "
        "the fleet is told its quota in `PARTNER_RATE_LIMITS`: a GCRA in one Redis script "
        "spaces every call of both workers 0.1 s apart (retries included), the steps that must "
        "wait go to the delayed queue and the releasers hand out about what the quota lets "
        "through per tick. *drained*: the first send to the last bundle finalized; the floor is "
        "two flight bookings a bundle at the quota's pace. Before issue 24: 74 of 94 flight "
        "calls answered 429, 78 s to drain."
    ),
    "13-deadline-threads": (
        "Forward steps give up by time, not by count: the return legs wait out 429 after 429 "
        "(no attempt burnt, *step failures* 0) until their bundle's `BOOKING_DEADLINE_S` "
        "passes; then the saga gives up (*reasons*) and rolls back, refunding the show tickets "
        'and cancelling the inbound leg (its cancel paced by the same "not before") while the '
        "airline still throttles bookings. Every try of the return leg was turned away "
        "unprocessed, so it is not in doubt (*given up in doubt*): the rollback neither waits "
        "for the airline to take bookings again nor books a ticket only to cancel it "
        "(*bookings after the limit lifted*)."
    ),
    "13-deferred-kill-threads": (
        "Every bundle waits in the airline's delayed queue (*at kill*: waiting, and leased by "
        "a releaser between taking and sending) when one of the two workers is killed. The "
        "queue is in Redis, not in the killed worker (a Celery ETA would be, until the "
        "visibility timeout): the survivor's releaser takes the bundles up once the airline is "
        "due, and the reconciler heals nothing (*reconciled*). Then a process takes the first "
        "due bundles as a releaser does (`DeferredSteps.take_due`) and is killed -9 before "
        "sending them: they were leased, not popped, and the survivor takes them once the "
        "lease runs out (`LEASE_S`, 30 s: *those finalized s after taken*)."
    ),
}

HEALED_BY_BACKPRESSURE: list[tuple[str, str]] = [
    (
        "429 and `Retry-After`, a partner's quota",
        'the fleet\'s "not before" and GCRA quota in Redis (`PARTNER_RATE_LIMITS`), steps '
        "waiting in a delayed queue in Redis, released by every worker; a wait burns no attempt",
    ),
    (
        "a rate limit past the booking deadline",
        "`BOOKING_DEADLINE_S`: the forward step gives up (not in doubt when no try reached the "
        "partner), the bundle rolls back saying why",
    ),
    (
        "a worker (or a releaser) killed while steps wait on a partner",
        "the delayed queue is in Redis, its entries leased, not popped: any other worker "
        "releases them, a lease left behind after `LEASE_S`",
    ),
]
