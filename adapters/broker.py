"""A worker that refuses what is not a task message instead of dying on it.

Anyone who can write to the broker can put anything on a queue. Out of the box, two kinds of
garbage stop a Celery 5 worker on the Redis broker for good ("Unrecoverable error"):
- an entry that is not a kombu envelope (raw bytes pushed on the list): kombu decodes it in the
  worker's event loop and the exception ends the loop;
- an envelope whose task body is not `[args, kwargs, embed]` (e.g. a JSON object): Celery builds
  the request in the consumer and the `ValueError` ends the worker. The message is unacked, so
  with `task_acks_late` it comes back and stops the next worker too.
Pickled bodies, undecodable bodies and unknown task names are already refused by Celery.

`Transport` also keeps one redis client per connection pool instead of a new one per
publish, ack and event (about a tenth of a worker's CPU). It drops, and logs, entries that are
not envelopes: checked for the fields kombu reads before it reads them, and JSON or base64 that
does not decode. `Consumer` refuses (logs what it drops, rejects without requeue) task messages
whose body Celery cannot build a request from. Each catches only the errors that bad input
raises there, so a bug elsewhere still surfaces. Both are enabled in celeryconfig with
`broker_transport` (Redis only) and `worker_consumer`.
`SentinelTransport` is the same on a `sentinel://` broker (REDIS_SENTINELS): kombu asks the
sentinels for the master each time it connects, so a worker, beat or Flower follows a failover
by reconnecting.
"""

from __future__ import annotations

import binascii
import json
import logging
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.transport import TRANSPORT_ALIASES, redis
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger(__name__)
# What decoding a raw entry of a Redis queue raises when it is not a kombu envelope: its JSON
# (kombu's `loads`) or its base64 body. Nothing else is caught: a bug is not a bad message.
UNDECODABLE = (json.JSONDecodeError, binascii.Error)
# What Celery raises building a request from a task body that is not `[args, kwargs, embed]`.
MALFORMED_BODY = (ValueError, TypeError)


class Channel(redis.Channel):
    _sync_client: Any = None
    _sync_client_pool: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        # kombu makes a new redis client for every publish, ack and event (~60 us each:
        # redis-py fills its table of ~200 response callbacks); one per pool does the same
        # work. A new pool (kombu replaces it after a disconnect) gets a new client.
        if self._pool is None and self.connection.client is None:
            # Closing after the broker went away, kombu restores the unacked messages through
            # a new pool built from connection details it no longer has: an AttributeError,
            # which stops the worker for good ("Unrecoverable error"). It is a lost
            # connection: say so, kombu ignores it, and the messages come back after the
            # visibility timeout while the worker reconnects.
            raise RedisConnectionError("the broker connection is closed")
        if asynchronous:
            return super()._create_client(asynchronous=True)
        if self._sync_client_pool is not self.pool:
            self._sync_client, self._sync_client_pool = super()._create_client(), self.pool
        return self._sync_client

    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))
        except UNDECODABLE as exc:  # the entry is already off the list: say what was dropped
            log.error("dropped an entry of a vip-bundles queue: not a message (%r)", exc)
            return True


def envelope_problem(entry: Any) -> str | None:
    """Why a decoded queue entry is not a kombu envelope (None: it is one). kombu's Message
    reads `properties` and its `delivery_tag`, and `headers` as a mapping."""
    if not isinstance(entry, dict):
        return f"JSON {type(entry).__name__}, not an object"
    properties = entry.get("properties")
    if not isinstance(properties, dict) or "delivery_tag" not in properties:
        return f"no properties.delivery_tag; fields {sorted(map(str, entry))[:10]}"
    if properties.get("body_encoding") not in (None, "base64"):
        return "unknown body_encoding"
    if not isinstance(entry.get("headers") or {}, dict):
        return "headers is not an object"
    return None


class Transport(redis.Transport):
    Channel = Channel

    def _deliver(self, message: Any, queue: str) -> None:
        if (problem := envelope_problem(message)) is not None:
            log.error("dropped an entry of queue %s: not a message (%s)", queue, problem)
            return
        super()._deliver(message, queue)


class SentinelChannel(Channel, redis.SentinelChannel):
    """Our channel, connected through Redis Sentinel (kombu's SentinelChannel finds the pool)."""


class SentinelTransport(redis.SentinelTransport):
    Channel = SentinelChannel


# After a connection error kombu switches to the next `sentinel://` address of the broker URL
# and resolves its transport again from the URL's scheme, which would drop the transport that
# celeryconfig names for this one: in processes that use it, `sentinel` means ours.
TRANSPORT_ALIASES["sentinel"] = f"{__name__}:SentinelTransport"


class Consumer(CeleryConsumer):
    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handle = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> Any:
            try:
                return handle(message)
            except MALFORMED_BODY as exc:
                self._refuse(message, exc)
                return None

        return on_task_received

    def _refuse(self, message: Any, exc: Exception) -> None:
        """Reject without requeue, logging what was dropped: its task name, id and size, not
        its body (Celery's own `on_invalid_task` would log the body: customers' data)."""
        headers = message.headers if isinstance(message.headers, dict) else {}
        log.error(
            "refused a malformed task message: %r; dropped task %s id %s (%d bytes, %s)",
            exc,
            headers.get("task"),
            headers.get("id"),
            len(message.body or b""),
            message.content_type,
        )
        message.reject_log_error(log, self.connection_errors)
