"""Render docs/reliability.md from the figures the last reliability run recorded.

    .venv/bin/pytest -m slow tests/reliability          # writes build/reliability/results.json
    .venv/bin/python -m tests.reliability.report        # writes docs/reliability.md

The prose (what each scenario does, what healed it) is here; every number comes from the run.
"""

from __future__ import annotations

import sys
from typing import Any

from tests.reliability.backpressure_notes import HEALED_BY_BACKPRESSURE, NOTES_BACKPRESSURE
from tests.reliability.results import RESULTS, ROOT, load

DOC = ROOT / "docs" / "reliability.md"
RUN_ALL = (
    ".venv/bin/pytest -m slow tests/reliability && .venv/bin/python -m tests.reliability.report"
)
COLUMNS = [
    ("bundles", "bundles"),
    ("finalized", "finalized"),
    ("failed", "failed"),
    ("cancelled", "cancelled"),
    ("parked", "parked"),
    ("stuck", "stuck"),
    ("lost", "lost"),
    ("duplicated_effects", "dup. effects"),
    ("leaked_flights", "leaked flights"),
    ("leaked_show_tickets", "leaked show tickets"),
    ("double_refunds", "double refunds"),
    ("seats_below_zero", "seats < 0"),
    ("events_lost", "events lost"),
    ("audit_findings", "audit findings"),
]
ORDER = [
    "1-kill-redelivery",
    "1-kill-reconciler",
    "1-kill-poison",
    "2-duplicates",
    "3-flaky",
    "4-outage",
    "5-restart-sigterm",
    "5-restart-sigkill",
    "6-seats",
    "7-bad-celery",
    "7-bad-http",
    "7-bad-http-headers",
    "7-bad-http-cross-site",
    "7-garbage-celery",
    "7-garbage-hardened",
    "8-cancel-race",
    "8-cancel-kill",
    "8-cancel-twice",
    "8-cancel-outage",
    "8-cancel-random",
    "9-partner-hangs",
    "10-failover-kill",
    "10-failover-cancel",
    "10-failover-rabbitmq",
    "11-archive-kill",
    "11-archive-pg-down",
    "11-archive-redis-kill",
    "12-mixed-upgrade",
    "12-mixed-rollback",
    "13-throttled",
    "13-quota",
    "13-deadline",
    "13-deferred-kill",
]
# Scenarios recorded on another pool carry its name (`1-kill-redelivery-threads`): each is
# listed right after its prefork run.
POOL_SUFFIXES = ("-threads",)

INTRO = f"""# Reliability: what the saga survives, measured

Every scenario below runs real `celery worker` processes (and `celery beat` where it says so),
a real Redis and the partner simulator over HTTP, injects its faults, waits for the bundles to
settle, and then checks the invariants of `tests/reliability/invariants.py` over what the
partners saw (`/_sim/calls`, flight tickets, refunds, receipts, seat counts) and over what Redis
holds (each bundle, its status index, the events stream):

- every bundle is stored, in exactly one status index (or, once archived, in the scenario's
  archive and in no Redis index), and `finalized`, `failed`, `cancelled`,
  or parked in `compensation_failed` (counted as *parked* and listed); none *stuck* in flight,
  none *lost*;
- a finalized bundle holds its show tickets and both legs; nothing refunded, voided, cancelled;
- a failed or cancelled bundle has each ticket refunded once and its receipt voided, every
  flight ticket it booked cancelled (else *leaked*); a cancelled one ends with
  `VipBundleCancelled_v1`;
- no effect twice for one idempotency key and no key reused for another request
  (*dup. effects*), no ticket refunded twice, seats never below zero (and where a test set the
  capacity, seats left = capacity - tickets held);
- every event in a bundle's history is on the stream once, in order (else *events lost*);
- `vip-bundles audit`, the product's own comparison with the partners' books (their GET lists
  of flight tickets, refunds and receipts), finds nothing (else *audit findings*).

Each scenario has its own Redis database (queues, results, bundles, events) and its own simulator
process, so the counts are that scenario's alone. Tests assert no timings, except the targets
issue 24 sets for partners' back-pressure (scenarios 4 and 13), which hold with room to spare.

The scenarios that a worker's pool could change (kill -9 with redelivery and with the
reconciler, a poison step, duplicates, flaky partners, every cancel race, a hanging partner)
run twice: on prefork, Celery's default, and on `-P threads`, the pool the README recommends
at the partners' real speed (docs/performance.md); the threads runs are marked *(-P threads)*
and their workers run the README's `-c 64` (a scenario that pins one or two slots keeps them),
so a worker killed mid-step takes up to 64 steps in flight with it. The partners'
back-pressure scenarios (4 and 13, issue 24) run on the issue's `-P threads -c 16` plus beat,
each on a `redis-server` of its own.

Run them all (about 17 minutes on 2 cores) and regenerate this page:

```bash
{RUN_ALL}
```

The default `pytest` run skips them (`-m "not slow"`); CI runs both.
"""

# What each scenario shows beyond its numbers.
NOTES: dict[str, str] = {
    "12-mixed-upgrade": (
        "A rolling deploy. Workers and beat of the previous release (the commit in "
        "`deploy/previous-release`, built from the clone's own history into a venv of its own: "
        "`tests/reliability/previous_release.py`) run alone, then workers of this release join "
        "on the same Redis database and queues, a worker of each side is killed (`kill -9`) "
        "mid-flight and replaced, and the previous release is stopped (worker and beat) with "
        "bundles still in flight and parked; this release's worker and beat finish them. "
        "*bundles seen in each status while mixed*: sampled every 0.3 s while both sides ran. "
        "The drill: *created by this release* (its bundles keep `created_by_release` although "
        "*created here rewritten by previous* of them were last written by the previous "
        "release, which drops fields it does not know from the document: the creator is kept "
        "beside it, in the bundle's hash), *last moved by ...* (`moved_by_release`, trusted "
        "only in a document of this release's version). Every bundle's stored document and "
        "what this release reads of it are checked to agree."
    ),
    "12-mixed-rollback": (
        "The same the other way round: this release runs first and writes documents, events and "
        "messages of the new version, the previous release joins, this release is stopped, and "
        "the previous release (which knows no versions) finishes every bundle in flight."
    ),
    "11-archive-kill": (
        "Retention (`vip-bundles archive run` with its clock a week and a day on, batches of 5, "
        "into a PostgreSQL database of the scenario's own). Killed before its first commit: "
        "everything stays in Redis, the archive is empty. Killed after a commit, before the "
        "removal from Redis: the committed batch is *in both*, nothing is *in neither*. A "
        "second pass writes the batch again (the upsert keeps the newest version) and removes "
        "it: every bundle archived once, none left in Redis, and the invariants and the audit "
        "hold over Redis and the archive together."
    ),
    "11-archive-pg-down": (
        "PostgreSQL unreachable, then the archiver's connection terminated mid-write: each pass "
        "exits 2 (`nothing was removed from Redis`), no tombstone is written; with PostgreSQL "
        "back, the next pass archives every bundle."
    ),
    "11-archive-redis-kill": (
        "The Redis server is killed while the removal waits (after the batch was committed) and "
        "started again from its append-only file: the archiver fails, every bundle is still in "
        "Redis (some in both), and the next pass finishes. (A removal script itself is atomic: "
        "Redis applies all of it or none, in memory and in its append-only file.)"
    ),
    "1-kill-redelivery": (
        "Five bundles are each held 20 s inside a different step kind (the simulator delays "
        "that call), then the worker's whole process group is killed. No reconciler runs. The "
        "unacked messages come back once `VISIBILITY_TIMEOUT_S` has passed: *redelivered "
        "messages* are task ids the new worker received that the killed one had received. "
        "Note kombu's sweep: a worker restores abandoned messages when it starts and then only "
        "every `unacked_restore_interval` x `unacked_restore_throttle` = 10 x 10 s, so on a "
        "worker that stays up a lost message can take `VISIBILITY_TIMEOUT_S` + 100 s to come "
        "back (see *Proposed* below)."
    ),
    "1-kill-reconciler": (
        "The same kill, but the killed messages never come back (the new worker's "
        "`VISIBILITY_TIMEOUT_S` is an hour): only beat's reconciler, which resumes bundles with "
        "no transition for `STALE_AFTER_S` from their stored state, heals them. Production runs "
        "both; the steps are idempotent, so whichever comes second finds the work done."
    ),
    "1-kill-poison": (
        "A step whose worker dies every time it runs: Celery would redeliver it forever (no "
        "redelivery cap, no redelivered flag on Redis). `tasks/steps.py:due()` counts the "
        "starts of each step in Redis and, past `2 * MAX_STEP_ATTEMPTS`, gives up: a forward "
        "step rolls back in doubt (the flight call is re-sent with the same idempotency key, "
        "which learns its tickets, then they are cancelled), an undo parks the bundle for the "
        "reconciler's next round."
    ),
    "2-duplicates": (
        "*skipped as done*: duplicates that found their step already recorded; *lost the "
        "race*: duplicates that ran concurrently with the original, reached the partner with "
        "the same idempotency key (answered from its first answer) and lost the versioned "
        "write; *events seen before*: failure events the process manager recognised by id."
    ),
    "3-flaky": (
        "Partner calls retry in-process (tenacity, `HTTP_RETRY_ATTEMPTS=4`); a step that still "
        "fails is noted (*step failures noted*) and resumed by the reconciler; an undo that "
        "still fails parks the bundle, and the reconciler takes it up again (*parked on the "
        "way*)."
    ),
    "5-restart-sigterm": (
        "One test-owned `redis-server` is broker, result backend and state store at once. The "
        "tasks running when it went away failed: their outcome, errback or result could not be "
        "written (*tasks failed on redis*: `network:ConnectionError` lines in the worker's "
        "log), so their chain or chord "
        "broke. The worker reconnected by itself (*worker reconnected*), the bundles whose "
        "chain broke were resumed by the reconciler (*reconciler*), and no message had to be "
        "given back by the broker (*messages given back*). *status at restart* shows how many "
        "bundles were in flight."
    ),
    "5-restart-sigkill": (
        "The same, but Redis is killed without a chance to flush (`appendfsync everysec`: up "
        "to a second of writes may be lost). The append-only file keeps a prefix of history, "
        "so state, queues and stream stay consistent with each other; partner calls redone "
        "after the restart carry the same keys."
    ),
    "6-seats": (
        "*refused 409* counts the flight bookings the airline refused; the losers' inbound "
        "seats are all given back."
    ),
    "7-bad-celery": (
        "Hypothesis generates requests with one to three bad fields (missing, wrong type, out "
        "of range, blank, unknown) or a broken cross-field rule; each is refused with "
        "`InvalidRequest` naming every bad field; nothing is stored; then a valid bundle "
        "finalizes on the same worker."
    ),
    "7-bad-http": (
        "The same generated requests and arbitrary bytes posted to `POST /book-vip-bundle` "
        "(served by uvicorn in a thread): each answered 422 with `errors` naming the fields, "
        "never a 5xx, nothing stored, and the server still answers `/health`."
    ),
    "7-bad-http-headers": (
        "Control characters other than tab never reach the door: uvicorn's strict parser "
        "answers them its own 400 (tests/e2e/test_http_parser.py); what does reach it, "
        "non-ASCII or over 128 characters, is a 422 naming `Correlation-ID`."
    ),
    "7-bad-http-cross-site": (
        "Against `vip-bundles api` in a process of its own, with default settings but "
        "`TRUSTED_PROXIES=127.0.0.1` (the test plays the proxy; no `API_KEYS`, so it serves "
        "loopback clients only): bodies typed anything but `application/json` answer 415, "
        "Hosts it does not serve 400, other sites' Origins 403, and `X-Forwarded-For` / "
        "`Forwarded` chains (alone or both, whatever the client wrote before them) whose "
        "last hop is a remote address 403. Each request carried a fresh `vip_bundle_id`: "
        "*booked by refused requests* counts those found stored afterwards."
    ),
    "7-garbage-celery": (
        "Garbage that Celery and kombu already refuse (JSON only: a pickled task is refused, "
        "never executed); the worker keeps running and a valid bundle finalizes."
    ),
    "7-garbage-hardened": (
        "Garbage that stops a stock Celery 5.7 worker for good (`Unrecoverable error`): raw "
        "bytes or non-envelope JSON on the Redis list, a task body that is not `[args, kwargs, "
        "embed]`. With acks_late the last one is restored and stops the next worker too. "
        "`adapters/broker.py` refuses them (logs, rejects without requeue) once celeryconfig "
        "enables it; until then this test is an expected failure."
    ),
    "8-cancel-race": (
        "One bundle per forward step (show, inbound flight, return flight) is held at the "
        "partner by the simulator's delay, and cancelled through the Celery door while held. "
        "Once `cancelling` no forward step starts (the start script checks the status); the "
        "held step was started, so it is in doubt and `resolve_booking` re-sends its request "
        "with the same key. *late outcomes recorded*: the tickets the held step booked, "
        "recorded while cancelling and then undone (once each, whichever of the original "
        "call and the re-send answered first)."
    ),
    "8-cancel-kill": (
        "Two finalized bundles and one held at its inbound flight are cancelled; every refund "
        "is held at the payments partner when the worker is killed (`kill -9` of its process "
        "group). The killed messages never come back (`VISIBILITY_TIMEOUT_S` is an hour): "
        "the reconciler resumes the stale `cancelling` bundles (*rollbacks resumed*) and the "
        "re-sent refunds carry the same keys as the held ones, so each ticket is refunded once."
    ),
    "8-cancel-twice": (
        "Six finalized bundles and six just booked, every cancel sent twice at once: each "
        "bundle records one `VipBundleCancellationRequested_v1` (the second cancel finds it "
        "`cancelling`: nothing new happens) and one `VipBundleCancelled_v1`."
    ),
    "8-cancel-outage": (
        "Finalized bundles cancelled while payments answer 503: the refunds' failures open the "
        "payments circuit (issue 24), and each cancellation then waits in payments' delayed "
        "queue (`cancelling`) or, when its retries ran out before the circuit opened, parks in "
        "`compensation_failed` (*status during outage*), keeping what it is. Once payments are "
        "back a probe closes the circuit and the waiting refunds are sent; beat takes the "
        "parked ones up as cancellations (`CancellationResumed`, never `RollbackResumed`). "
        "All end `cancelled`, each ticket refunded once."
    ),
    "8-cancel-random": (
        "120 bundles (a third with the return flight sold out) while every partner misbehaves "
        "as in scenario 3; 70% of them are cancelled at random moments within 6 s of booking, "
        "so cancels land before, during and after every step, during rollbacks and after "
        "finalizing. A cancel of a bundle that had already `failed` is refused (*cancels "
        "refused already failed*); every other cancelled bundle ends `cancelled`. *cancelled "
        "from*: the status each cancel found."
    ),
    "10-failover-kill": (
        "A Redis master, its replica (both `appendonly yes`) and three sentinels (quorum 2, "
        "down after 1 s) are real processes on free ports (`tests/reliability/"
        "sentinel_stack.py`); the worker, beat, the callers and `vip-bundles audit` know only "
        "the sentinels. The master is killed (`kill -9`) with most bundles in flight and "
        "started again once a new master is named: the sentinels make it a replica. "
        "*answered before kill*: bundles whose id a caller had been given; *answered missing on "
        "new master*: those of them not on the promoted replica the moment it became master "
        "(the answers wait for a replica: `WAIT`). *seconds kill to ...*: the sentinels naming "
        "a new master, the saga's first transition on it (bundles flow again), a new booking "
        "answered (behind the intake queue's backlog). *stream consumer*: a consumer group "
        "reading the events stream through the failover; it deduplicates on `event_id` "
        "(uuid5 of the event's idempotency key, so a redone transition republishes the same "
        "id). On one machine the replica lags the master by well under a millisecond, so the "
        "kill loses few writes, if any; the refusal to confirm what no replica has is tested "
        "directly (a SIGSTOPped replica: `tests/e2e/test_sentinel_failover.py`, "
        "`tests/integration/test_redis_connection.py`)."
    ),
    "10-failover-cancel": (
        "The same, with 20 bundles cancelled through the Celery door just before the kill: "
        "every cancel that was answered (or, without an answer, sent again) ends `cancelled`."
    ),
    "10-failover-rabbitmq": (
        "The same failover with RabbitMQ as the broker (a vhost of its own, quorum queues, "
        "publisher confirms): messages are safe at RabbitMQ, state and results follow the "
        "Sentinel master. A step whose outcome was written to the old master in its last "
        "moments had its message acked already: the reconciler re-drives the bundle from its "
        "stored state and the step re-sends with the same idempotency key."
    ),
    "9-partner-hangs": (
        "The airline answers the return flight's booking only after two minutes. On `-P "
        "threads` Celery enforces no `task_time_limit` (and here it is an hour anyway), so "
        "what ends the step is the partner client: every try's timeout is cut to what is left "
        "of the call's total deadline (`HTTP_CALL_DEADLINE_S`), and no retry starts past it. "
        "*return step seconds*: the inbound leg's `FlightBooked_v1` to the return leg's "
        "`FlightBookingFailed_v1`, from the bundle's history. The saga then decides "
        "(`BOOKING_DEADLINE_S=2`, passed when the step fails: give up and roll back, the leg "
        "in doubt); the undo that re-sends the hung booking to learn its tickets hits the same "
        "hang and ends at `COMPENSATION_CALL_DEADLINE_S`: it parks the bundle, or, once the "
        "airline's circuit has opened (five timeouts in a row), waits in the delayed queue "
        "for the next probe (*status while hanging*). Once the airline answers, the bundle "
        "ends `failed`, nothing leaked."
    ),
}
NOTES.update(NOTES_BACKPRESSURE)  # scenarios 4 and 13, issue 24

HEALED_BY = [
    (
        "worker killed mid-step",
        "redelivery after `VISIBILITY_TIMEOUT_S` (at once when a worker starts, else on kombu's "
        "~100 s sweep), or the reconciler after `STALE_AFTER_S`: whichever comes first",
    ),
    (
        "a step that always kills its worker",
        "the start count in `due()`: rollback (forward step) or parking (undo) after "
        "`2 * MAX_STEP_ATTEMPTS` starts",
    ),
    (
        "duplicate messages, duplicate events",
        "the stored state (a step not due does nothing), versioned writes (one of two racing "
        "writers wins), idempotency keys at the partners, event ids seen before",
    ),
    (
        "5xx and timeouts",
        "tenacity retries in-process; then the reconciler (forward steps) or parking and the "
        "reconciler's backoff (undo steps)",
    ),
    (
        "payments down for long",
        "the fleet's circuit breaker (one probe per interval), undos waiting in the delayed "
        "queue until a probe closes it; an undo failed past its retries parks as before, "
        "and the reconciler's doubling backoff takes it up",
    ),
    (
        "Redis restarted or killed",
        "the append-only file, the worker reconnecting by itself, the reconciler for the "
        "chains the outage broke; a client that got no answer resubmits with the same id",
    ),
    (
        "the Redis master killed (Sentinel failover)",
        "every connection asking the sentinels for the master and retrying through the "
        "election; answers given only once a replica has the write (`WAIT`); writes lost with "
        "the master redone by redelivery, the reconciler and idempotency keys; event ids "
        "deterministic, so consumers deduplicate on `event_id`",
    ),
    (
        "the last seats",
        "the airline's atomic seat check; the losers' rollback gives their other seats back",
    ),
    (
        "a cancel racing a step at a partner",
        "the start script (no forward step starts once `cancelling`), late outcomes recorded "
        "and undone, a step in doubt resolved by re-sending with the same idempotency key",
    ),
    (
        "a partner that hangs",
        "the partner client's total deadline per call (each try's timeout cut to what is left), "
        "on any pool; then the saga's usual failure handling",
    ),
    (
        "a deploy: workers of two releases on the same queues, either stopped",
        "additive changes only (the previous release ignores what it does not know), schema "
        "versions read one release back, what a release may lose kept beside the document; "
        "a worker meeting a newer version defers the message to a newer worker",
    ),
    (
        "malformed requests, garbage on the queue",
        "pydantic validation at the doors; JSON-only content; `adapters/broker.py` for what "
        "would stop the worker",
    ),
    (
        "archiving killed, PostgreSQL down, Redis killed mid-removal",
        "committed to the archive before anything leaves Redis; one version-checked removal "
        "script per bundle; the next pass (the archive's upsert keeps the newest version)",
    ),
]
HEALED_BY += HEALED_BY_BACKPRESSURE

PROPOSED = """## Proposed (not applied here)

- `celeryconfig.py`: enable the hardening of `adapters/broker.py`
  (`worker_consumer = "adapters.broker:Consumer"`, and on a `redis://` broker
  `broker_transport = "adapters.broker:Transport"`). A stock worker stops for good on raw
  bytes or non-envelope JSON pushed on the Redis list, or on a task body that is not
  `[args, kwargs, embed]` (with acks_late that message comes back and stops the next worker);
  `test_garbage_that_stops_a_stock_worker_is_refused_too` is an expected failure until then.
- `celeryconfig.py`: make kombu sweep for abandoned
  messages at the pace of the visibility timeout: `"unacked_restore_interval": 10,
  "unacked_restore_throttle": 1` in the Redis transport options (the default sweeps every
  100 s).
"""


def _findings() -> str:
    rows = [f"| {fault} | {healed} |" for fault, healed in HEALED_BY]
    table = ["## What healed what", "", "| fault | healed by |", "| --- | --- |", *rows]
    return "\n".join([*table, "", PROPOSED])


def _row(key: str, entry: dict[str, Any]) -> str:
    counts = entry["counts"]
    cells = [f"[{entry['title']}](#{key})", *(str(counts.get(c, "")) for c, _ in COLUMNS)]
    return "| " + " | ".join([*cells, f"{entry['duration_s']} s"]) + " |"


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
    return str(value)


def _base(key: str) -> str:
    """The prefork scenario a key is a variant of (itself on prefork)."""
    for suffix in POOL_SUFFIXES:
        if key.endswith(suffix):
            return key.removesuffix(suffix)
    return key


def _section(key: str, entry: dict[str, Any]) -> str:
    counts = ", ".join(f"{label} {entry['counts'][c]}" for c, label in COLUMNS)
    lines = [f'<a id="{key}"></a>', f"### {entry['title']}", ""]
    if key in NOTES:
        lines += [NOTES[key], ""]
    elif (base := _base(key)) != key:
        pool = entry.get("pool", key.rsplit("-", 1)[-1])
        lines += [f"The scenario [above](#{base}), every worker on `-P {pool}`.", ""]
    lines += ["Faults injected:", "", *(f"- {f}" for f in entry["faults"]), ""]
    figures = {k: v for k, v in entry.get("figures", {}).items() if k != "bundles"}
    if figures:
        lines += ["Measured:", ""]
        lines += [f"- {k.replace('_', ' ')}: {_value(v)}" for k, v in figures.items()]
        lines.append("")
    lines += [f"Invariants: {counts}.", ""]
    if entry.get("violations"):
        lines += ["Violations:", "", *(f"- {v}" for v in entry["violations"]), ""]
    lines += ["Reproduce:", "", "```bash", entry["command"], "```", ""]
    return "\n".join(lines)


def render(results: dict[str, dict[str, Any]]) -> str:
    known = [k + s for k in ORDER for s in ("", *POOL_SUFFIXES)]
    keys = [k for k in known if k in results] + sorted(set(results) - set(known))
    machine = {results[k].get("machine") for k in keys} - {None}
    dates = sorted(results[k]["recorded_at"] for k in keys)
    header = "| scenario | " + " | ".join(label for _, label in COLUMNS) + " | time |"
    parts = [
        INTRO,
        "## Figures of the last run",
        "",
        f"Recorded {dates[0]} to {dates[-1]} on {', '.join(sorted(machine))}."
        if dates
        else "No figures recorded yet.",
        "",
        header,
        "|" + " --- |" * (len(COLUMNS) + 2),
        *(_row(k, results[k]) for k in keys),
        "",
        "## Scenarios",
        "",
        *(_section(k, results[k]) for k in keys),
        _findings(),
    ]
    return "\n".join(parts)


def main() -> int:
    results = load()
    if not results:
        print(f"no results at {RESULTS}: run `.venv/bin/pytest -m slow tests/reliability`")
        return 1
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render(results))
    print(f"wrote {DOC.relative_to(ROOT)} from {len(results)} scenarios in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
