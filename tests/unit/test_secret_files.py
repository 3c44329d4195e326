"""Every secret setting may be given as `<NAME>_FILE` (Docker and Kubernetes secrets), and a
`rediss://` URL without `ssl_cert_reqs` is verified rather than refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from adapters.settings import SECRET_SETTINGS, Settings

VALUES = {
    "redis_url": "rediss://vip:s3cret-redis@redis.internal:6380/0?ssl_cert_reqs=required",
    "broker_url": "amqps://vip:s3cret-rabbit@rabbit.internal:5671/vip-bundles",
    "result_backend": "redis://:s3cret-results@redis.internal:6379/1",
    "archive_url": "postgresql://vip:s3cret-pg@pg.internal/vip_bundles?sslmode=verify-full",
    "api_keys": "k-" + "s" * 40 + ":book",
    "redis_sentinel_password": "s3cret-sentinel",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in SECRET_SETTINGS:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(f"{name.upper()}_FILE", raising=False)
    return monkeypatch


@pytest.mark.parametrize("name", SECRET_SETTINGS)
def test_each_secret_setting_can_come_from_a_file(name: str, env, tmp_path: Path):
    secret = tmp_path / name
    secret.write_text(VALUES[name] + "\n")  # as `echo` and most secret stores write it
    env.setenv(f"{name.upper()}_FILE", str(secret))
    value = getattr(Settings(), name)
    shown = value.get_secret_value() if isinstance(value, SecretStr) else value
    assert shown == VALUES[name]
    if isinstance(value, SecretStr):  # the URLs' passwords are masked where they are shown
        assert VALUES[name] not in repr(Settings())


def test_both_forms_at_once_are_refused_naming_them(env, tmp_path: Path):
    (tmp_path / "keys").write_text(VALUES["api_keys"])
    env.setenv("API_KEYS_FILE", str(tmp_path / "keys"))
    env.setenv("API_KEYS", VALUES["api_keys"])
    with pytest.raises(ValueError, match="API_KEYS and API_KEYS_FILE are both set"):
        Settings()


def test_an_unreadable_file_is_named_never_its_content(env, tmp_path: Path):
    env.setenv("REDIS_URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"REDIS_URL_FILE: cannot read .*missing: No such file"):
        Settings()


def test_a_rediss_url_without_ssl_cert_reqs_is_verified(env):
    for url in ("rediss://:pw@redis.internal:6380/0", "rediss://:pw@h:6380/0?ssl_ca_certs=/ca"):
        env.setenv("REDIS_URL", url)
        assert Settings().redis_url.endswith("ssl_cert_reqs=required")
    env.setenv("REDIS_URL", "rediss://:pw@h:6380/0?ssl_cert_reqs=optional")
    assert Settings().redis_url.endswith("ssl_cert_reqs=optional")  # as written
    env.setenv("REDIS_URL", "redis://:pw@h:6379/0")
    assert Settings().redis_url == "redis://:pw@h:6379/0"


def test_a_client_certificate_needs_its_key(env):
    env.setenv("PARTNER_CERT_FILE", "/etc/vip-bundles/tls/client.crt")
    with pytest.raises(ValidationError, match="PARTNER_CERT_FILE and PARTNER_KEY_FILE"):
        Settings()
