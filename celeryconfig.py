"""Celery configuration for vip-bundles (`celery -A tasks ...` loads it).

Values come from the environment through `adapters.settings`; see the README for the list.
"""

from kombu import Exchange, Queue

from adapters import redis_connection, tls
from adapters.settings import SettingsError, get_settings

try:
    _s = get_settings()
except SettingsError as bad:
    # One line naming the variable, not a traceback (workers, beat, Flower: anything that
    # loads this configuration).
    raise SystemExit(f"vip-bundles: bad setting: {bad}") from None

# With REDIS_SENTINELS, Redis is reached through Celery's own Sentinel support (the master's
# database number and password from REDIS_URL): the same settings a Door 1 caller uses.
_redis = redis_connection.celery_sentinel_url(_s) if _s.redis_sentinels else _s.redis_url
broker_url = _s.broker_url or _redis
result_backend = _s.result_backend or _redis

# JSON only: a pickled message is refused by the worker, never executed.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# At-least-once: a task is acked after it ran, and requeued if its worker dies mid-task.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_time_limit = _s.task_time_limit_s
task_soft_time_limit = _s.task_time_limit_s - 10
result_expires = _s.result_expires_s

# No `global_keyprefix`: queues and result keys keep the contract's names, so a caller with
# only `celery` finds them (shared/intake-api.md). Deployments sharing a Redis use a database
# number each; KEY_PREFIX prefixes only our own state and stream keys.
_redis_options: dict = {"visibility_timeout": _s.visibility_timeout_s}
_sentinel_options = redis_connection.celery_transport_options(_s) if _s.redis_sentinels else {}
if broker_url.startswith(("redis://", "rediss://", "sentinel://")):
    # Look for abandoned unacked messages every 10 s, not kombu's 10 x 10 s.
    broker_transport_options = {
        **_redis_options,
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
    }
    # Drops (and logs) list entries that are not messages instead of dying on them.
    broker_transport = "adapters.broker:Transport"
    if redis_connection.is_sentinel_url(broker_url):
        broker_transport_options.update(_sentinel_options)
        broker_transport = "adapters.broker:SentinelTransport"
    if redis_connection.is_sentinel_url(broker_url) and _s.redis_url.startswith("rediss://"):
        broker_use_ssl = redis_connection.celery_use_ssl(_s)  # TLS to the master
if result_backend.startswith(("redis://", "rediss://", "sentinel://")):
    result_backend_transport_options = _redis_options
    if redis_connection.is_sentinel_url(result_backend):
        result_backend_transport_options = {**_redis_options, **_sentinel_options}
        if _s.redis_url.startswith("rediss://"):
            redis_backend_use_ssl = redis_connection.celery_use_ssl(_s)
        # A result written during a failover is retried on the new master, not dropped.
        result_backend_always_retry = True
        result_backend_max_retries = 30
# amqps:// with a private CA or a client certificate (BROKER_CA_FILE, ...): Celery's own option.
if broker_url.startswith("amqps://"):
    broker_use_ssl = tls.broker_use_ssl(_s.broker_ca_file, _s.broker_cert_file, _s.broker_key_file)
    if broker_use_ssl is None:
        broker_use_ssl = True  # the system's CAs (or SSL_CERT_FILE)
# Refuses task messages it cannot build a request from, instead of stopping the worker.
worker_consumer = "adapters.broker:Consumer"
broker_connection_retry_on_startup = True

# Queues: intake (the public door), the forward booking steps, and compensations, so that
# undo work never waits behind a flood of new bookings. A worker without -Q consumes all three.
INTAKE_QUEUE = "vip-bundles"
BOOKING_QUEUE = "vip-bundles.booking"
COMPENSATION_QUEUE = "vip-bundles.compensation"
_exchange = Exchange("vip-bundles", type="direct")
_queue_arguments: dict[str, str] = {}
if broker_url.startswith(("amqp://", "amqps://", "pyamqp://")) and _s.broker_queue_type == "quorum":
    # RabbitMQ in HA: quorum queues (replicated with Raft across the cluster). A publish
    # returns once a quorum of the queue's replicas has it (publisher confirms). Quorum queues
    # have no global QoS: Celery detects them and sets the prefetch per consumer. Celery's
    # native delayed delivery (countdown/ETA on quorum queues) needs a topic exchange; no task
    # here is sent with a countdown or ETA, so none waits in a worker's memory. A caller that
    # declares the queues must declare them quorum too (README, "RabbitMQ").
    _queue_arguments = {"x-queue-type": "quorum"}
    broker_transport_options = {"confirm_publish": True}
    task_default_queue_type = "quorum"
    task_create_missing_queue_type = "quorum"
    worker_detect_quorum_queues = True
task_queues = [
    Queue(q, _exchange, routing_key=q, queue_arguments=_queue_arguments or None)
    for q in (INTAKE_QUEUE, BOOKING_QUEUE, COMPENSATION_QUEUE)
]
task_default_queue = BOOKING_QUEUE
task_default_exchange = "vip-bundles"
task_default_routing_key = BOOKING_QUEUE
task_routes = {
    "vip_bundle.book": {"queue": INTAKE_QUEUE, "routing_key": INTAKE_QUEUE},
    "vip_bundle.cancel": {"queue": INTAKE_QUEUE, "routing_key": INTAKE_QUEUE},
    "vip_bundle.compensation.*": {"queue": COMPENSATION_QUEUE, "routing_key": COMPENSATION_QUEUE},
    "vip_bundle.process_manager.*": {
        "queue": COMPENSATION_QUEUE,
        "routing_key": COMPENSATION_QUEUE,
    },
    "vip_bundle.audit": {"queue": COMPENSATION_QUEUE, "routing_key": COMPENSATION_QUEUE},
    "vip_bundle.archive": {"queue": COMPENSATION_QUEUE, "routing_key": COMPENSATION_QUEUE},
}

# Task events cost a bare chain about 30% of its throughput, so they are paid for only while
# someone watches: off by default, and Flower (or `celery -A tasks control enable_events`)
# turns them on in the running workers by itself (Flower's --enable_events, on by default).
# TASK_EVENTS=true sends them from the start. Nothing is written to the result backend for
# monitoring either (no track_started, no result_extended).
worker_send_task_events = _s.task_events
task_send_sent_event = _s.task_events

# The reconciler (tasks/reconcile.py) and the audit against the partners' records
# (tasks/audit.py) run under `celery -A tasks beat`.
beat_schedule = {
    "reconcile-vip-bundles": {
        "task": "vip_bundle.reconcile",
        "schedule": _s.reconcile_every_s,
        "options": {"queue": COMPENSATION_QUEUE, "expires": _s.reconcile_every_s},
    },
    "audit-vip-bundles": {
        "task": "vip_bundle.audit",
        "schedule": _s.audit_every_s,
        "options": {"queue": COMPENSATION_QUEUE, "expires": _s.audit_every_s},
    },
    # Retention (tasks/archive.py): settled bundles past RETENTION_S go to ARCHIVE_URL.
    "archive-vip-bundles": {
        "task": "vip_bundle.archive",
        "schedule": _s.archive_every_s,
        "options": {"queue": COMPENSATION_QUEUE, "expires": _s.archive_every_s},
    },
}
