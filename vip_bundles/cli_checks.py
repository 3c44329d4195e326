"""The CLI's connections: tried once before a command that needs them, and a failure said in
one line naming the connection and the cause (tasks/connections.py), never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

# Commands that talk to Redis (and `book` to the broker) as soon as they start.
CONNECTED = {"book", "status", "cancel", "list", "audit", "resume", "stats"}


def uses_connections(args: list[str]) -> bool:
    return bool(args) and args[0] in CONNECTED and not {"--help", "-h"} & set(args)


def run_checked(cli: Callable[[], object], args: list[str]) -> None:
    from kombu.exceptions import OperationalError
    from redis.exceptions import RedisError

    from adapters.connection_check import ConnectionCheckFailed, cause, redact
    from adapters.settings import SettingsError, get_settings
    from process_manager.versions import NewerSchema

    try:
        if args and not {"--help", "-h"} & set(args):
            get_settings()  # a bad setting is said in one line before anything starts
        if uses_connections(args):
            from tasks.connections import check_connections

            # Each connection tried once first: a bad certificate or password is said in one
            # line now, not after the retries that carry a command through a failover.
            check_connections(broker=args[0] == "book")
        cli()
    except NewerSchema as newer:
        # Written by a newer release (a deploy under way): its own CLI reads it.
        print(f"vip-bundles: {newer}; use the newer release's CLI", file=sys.stderr)
        raise SystemExit(1) from None
    except SettingsError as bad:
        print(f"vip-bundles: bad setting: {bad}", file=sys.stderr)
        raise SystemExit(2) from None
    except ConnectionCheckFailed as failed:
        print(f"vip-bundles: {failed}", file=sys.stderr)
        raise SystemExit(1) from None
    except (RedisError, OperationalError, OSError) as exc:
        # A connection that failed mid-command: name it (each is tried once more, in order)
        # and say why in one line.
        from tasks.connections import check_connections

        try:
            check_connections()
            line = f"vip-bundles: {redact(cause(exc))}"
        except ConnectionCheckFailed as failed:
            line = f"vip-bundles: {failed}"
        print(line, file=sys.stderr)
        raise SystemExit(1) from None
