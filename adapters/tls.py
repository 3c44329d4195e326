"""TLS client settings that are not in a URL: the partners' (httpx) and the AMQP broker's.

Redis and PostgreSQL take theirs in their URLs, in their own libraries' forms (redis-py's
`ssl_ca_certs`, libpq's `sslmode`/`sslrootcert`); httpx and Celery's `broker_use_ssl` take a
context or a dict, made here from the PARTNER_* and BROKER_* file settings.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any


def client_context(
    ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext | None:
    """A verifying client context trusting `ca_file` (else the system's CAs, or
    SSL_CERT_FILE), presenting `cert_file`/`key_file` when given; None: nothing to change."""
    if ca_file is None and cert_file is None:
        return None
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context


def broker_use_ssl(
    ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None
) -> dict[str, Any] | None:
    """Celery's `broker_use_ssl` for amqps:// (py-amqp's ssl options); None: its defaults
    (the system's CAs, the host name checked)."""
    if ca_file is None and cert_file is None:
        return None
    options: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED}
    if ca_file is not None:
        options["ca_certs"] = str(ca_file)
    if cert_file is not None:
        options["certfile"] = str(cert_file)
        options["keyfile"] = str(key_file) if key_file else None
    return options
