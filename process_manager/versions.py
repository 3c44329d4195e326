"""Schema versions of what lives across a deploy, and the release that runs.

A saga outlives a deploy: a bundle booked before a release is moved by workers of the next
one, and during a rolling deploy workers of both take the same queues. So the three things
that cross a deploy carry a schema version: the stored bundle document (in Redis and in the
archive's rows), every task message (a `vip_schema` header: the tasks' signatures stay as
they are) and every event (`header.schema_version`).

The rules (README, "Upgrading"):
- a reader accepts the previous version and the current one (`readable`); a version that is
  absent is 1: everything written by the releases before versions were written;
- a reader that meets a version newer than it knows (`NewerSchema`) leaves the thing alone
  and lets a newer worker take it (tasks/schema_guard.py);
- changes are additive (a new optional field); a field is removed, or a task renamed, a
  release after the last reader of the old shape is gone.
"""

from __future__ import annotations

# The release this code is (pyproject.toml's version, checked by tests/unit/test_versions.py).
# Bundles record which release created them and which last moved them.
RELEASE = "0.2.0"

# What a bundle shows for a release it does not know: one before releases were recorded.
UNRECORDED = "before 0.2.0 (not recorded)"

ABSENT = 1  # the version of anything written without one: the releases before 0.2.0
# Version 2: the document records `created_by_release` and `moved_by_release`; messages and
# events carry their version. Otherwise the shapes of version 1, unchanged.
DOCUMENT = 2
MESSAGE = 2
EVENT = 2
OLDEST_READ = 1  # the previous version: every reader still accepts it

MESSAGE_HEADER = "vip_schema"  # the task message header that carries MESSAGE


class NewerSchema(Exception):
    """Written by a newer release than this one: leave it to a worker that knows it."""

    def __init__(self, what: str, version: int, known: int, bundle_id: str | None = None):
        super().__init__(
            f"{what} of schema version {version} (this release, {RELEASE}, knows up to "
            f"{known}){f' for bundle {bundle_id}' if bundle_id else ''}: left to a newer worker"
        )
        self.what = what
        self.version = version
        self.bundle_id = bundle_id


class OlderSchema(ValueError):
    """Older than the previous version: no release that wrote it may still be running."""


def release_label(release: str | None) -> str:
    """A bundle's `created_by_release` / `moved_by_release` as shown to people."""
    return release or UNRECORDED


def version_of(value: object) -> int:
    """A version as written (None: absent, version 1); a garbled one is refused."""
    if value is None:
        return ABSENT
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"schema version: not a number: {value!r}")
    return int(value)


def check(what: str, value: object, known: int, bundle_id: str | None = None) -> int:
    """The version of `what`, if this release reads it; else `NewerSchema` or `OlderSchema`."""
    version = version_of(value)
    if version > known:
        raise NewerSchema(what, version, known, bundle_id)
    if version < OLDEST_READ:
        raise OlderSchema(f"{what}: schema version {version} is older than {OLDEST_READ}")
    return version
