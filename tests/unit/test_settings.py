"""Settings: one frozen object, every contract variable, one line per bad value."""

import dataclasses
from pathlib import Path

import pytest

from quart_tokengate.service.settings import Settings, SettingsError


def test_defaults_match_the_contract():
    s = Settings.from_env({}, dotenv=None)
    assert (s.issuer, s.audience) == ("tokengate", "tokengate")
    assert (s.access_ttl, s.refresh_ttl, s.idle_timeout) == (300, 1_296_000, 1800)
    assert (s.session_max_age, s.refresh_grace, s.max_sessions) == (2_592_000, 10, 0)
    assert s.token_location == ("headers",)
    assert s.implicit_refresh is False and s.allow_registration is True
    assert (s.leeway, s.password_min_length) == (0, 8)
    assert (s.login_max_failures, s.login_window, s.reset_ttl) == (10, 900, 900)
    assert s.instance_dir == Path("instance")
    assert s.redis_url is None and s.secret_key is None
    assert s.sqlalchemy_url.startswith("sqlite+aiosqlite:///")
    assert s.sqlalchemy_url.endswith("instance/tokengate.db")


def test_every_variable_is_read():
    env = {
        "TOKENGATE_SECRET_KEY": "s" * 32,
        "TOKENGATE_ISSUER": "me",
        "TOKENGATE_AUDIENCE": "you",
        "TOKENGATE_ACCESS_TTL": "60",
        "TOKENGATE_REFRESH_TTL": "600",
        "TOKENGATE_IDLE_TIMEOUT": "0",
        "TOKENGATE_SESSION_MAX_AGE": "3600",
        "TOKENGATE_REFRESH_GRACE": "3",
        "TOKENGATE_MAX_SESSIONS": "1",
        "TOKENGATE_TOKEN_LOCATION": "cookies,headers",
        "TOKENGATE_IMPLICIT_REFRESH": "true",
        "TOKENGATE_LEEWAY": "2",
        "TOKENGATE_ALLOW_REGISTRATION": "false",
        "TOKENGATE_PASSWORD_MIN_LENGTH": "12",
        "TOKENGATE_LOGIN_MAX_FAILURES": "3",
        "TOKENGATE_LOGIN_WINDOW": "60",
        "TOKENGATE_RESET_TTL": "120",
        "TOKENGATE_INSTANCE_DIR": "/tmp/tg",
        "TOKENGATE_DATABASE_URL": "postgresql+asyncpg://u@h/db",
        "TOKENGATE_REDIS_URL": "redis://127.0.0.1:6379/3",
        "TOKENGATE_REDIS_CLUSTER": "false",
        "TOKENGATE_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.7,::1",
        "TOKENGATE_ALGORITHM": "hs256",
        "TOKENGATE_FRESH_TTL": "30",
        "TOKENGATE_COOKIE_DOMAIN": "example.com",
        "TOKENGATE_COOKIE_SAMESITE": "strict",
        "TOKENGATE_COOKIE_SECURE": "false",
        "TOKENGATE_INTROSPECTION_CLIENTS": "api:s3cret, billing:other:colon",
        "TOKENGATE_LOG_FORMAT": "JSON",
        "TOKENGATE_NEAR_CACHE": "true",
        "TOKENGATE_API_KEYS": "off",
        "TOKENGATE_API_KEY_TTL": "3600",
        "TOKENGATE_API_KEY_MAX_TTL": "86400",
        "TOKENGATE_RATE_LIMIT": "100/60",
    }
    s = Settings.from_env(env, dotenv=None)
    assert (s.algorithm, s.fresh_ttl) == ("HS256", 30)
    assert (s.cookie_domain, s.cookie_samesite, s.cookie_secure) == (
        "example.com",
        "Strict",
        "false",
    )
    assert s.introspection_clients == (("api", "s3cret"), ("billing", "other:colon"))
    assert "s3cret" not in repr(s)
    assert s.secret_key == "s" * 32 and s.issuer == "me" and s.audience == "you"
    assert (s.access_ttl, s.refresh_ttl, s.idle_timeout, s.session_max_age) == (60, 600, 0, 3600)
    assert (s.refresh_grace, s.max_sessions, s.leeway) == (3, 1, 2)
    assert s.token_location == ("cookies", "headers") and s.use_cookies and s.use_headers
    assert s.implicit_refresh and not s.allow_registration
    assert (s.password_min_length, s.login_max_failures, s.login_window, s.reset_ttl) == (
        12, 3, 60, 120,
    )  # fmt: skip
    assert s.instance_dir == Path("/tmp/tg")
    assert s.sqlalchemy_url == "postgresql+asyncpg://u@h/db"
    assert s.redis_url == "redis://127.0.0.1:6379/3" and not s.redis_cluster
    assert s.trusted_proxies == ("10.0.0.0/8", "192.168.1.7/32", "::1/128")
    assert s.redis_url == "redis://127.0.0.1:6379/3"
    assert s.log_format == "json"
    assert s.near_cache
    assert (s.api_keys, s.api_key_ttl, s.api_key_max_ttl) == (False, 3600, 86400)
    assert s.rate_limit == (100, 60)
    names = {f"TOKENGATE_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    assert names == set(env)


def test_every_bad_value_is_named_on_its_own_line():
    env = {
        "TOKENGATE_ACCESS_TTL": "five minutes",
        "TOKENGATE_IMPLICIT_REFRESH": "maybe",
        "TOKENGATE_TOKEN_LOCATION": "query",
        "TOKENGATE_REDIS_URL": "localhost:6379",
        "TOKENGATE_LEEWAY": "-1",
        "TOKENGATE_LOG_FORMAT": "xml",
        "TOKENGATE_ACESS_TTL": "60",
    }
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env, dotenv=None)
    lines = str(info.value).splitlines()
    assert len(lines) == len(env)
    for name in env:
        assert sum(line.startswith(name + ":") for line in lines) == 1, name


def test_short_secret_is_refused_and_never_shown():
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"TOKENGATE_SECRET_KEY": "too-short-secret"}, dotenv=None)
    assert "TOKENGATE_SECRET_KEY" in str(info.value)
    assert "too-short-secret" not in str(info.value)
    assert "s" * 40 not in repr(Settings(secret_key="s" * 40))


@pytest.mark.parametrize("raw", ["100", "0/60", "100/0", "a/b", "100/60/1", "-1/60", "/"])
def test_a_bad_rate_limit_is_named(raw):
    with pytest.raises(SettingsError, match=r"^TOKENGATE_RATE_LIMIT: expected N/S"):
        Settings.from_env({"TOKENGATE_RATE_LIMIT": raw}, dotenv=None)


def test_an_api_key_lifetime_longer_than_the_longest_is_refused():
    with pytest.raises(SettingsError, match="TOKENGATE_API_KEY_TTL: must not be longer"):
        Settings.from_env(
            {"TOKENGATE_API_KEY_TTL": "100", "TOKENGATE_API_KEY_MAX_TTL": "10"}, dotenv=None
        )
    assert Settings().rate_limit is None and Settings().api_keys


def test_keys_cookies_and_introspection_settings_are_checked():
    env = {
        "TOKENGATE_ALGORITHM": "HS512",
        "TOKENGATE_COOKIE_SECURE": "sometimes",
        "TOKENGATE_COOKIE_DOMAIN": "a b;c",
        "TOKENGATE_INTROSPECTION_CLIENTS": "no-secret",
        "TOKENGATE_FRESH_TTL": "soon",
    }
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env, dotenv=None)
    lines = str(info.value).splitlines()
    assert sorted(line.split(":")[0] for line in lines) == sorted(env)
    with pytest.raises(SettingsError, match="TOKENGATE_SECRET_KEY: is an HS256 key"):
        Settings.from_env(
            {"TOKENGATE_ALGORITHM": "EdDSA", "TOKENGATE_SECRET_KEY": "s" * 32}, dotenv=None
        )
    assert Settings.from_env({"TOKENGATE_ALGORITHM": "es256"}, dotenv=None).algorithm == "ES256"


@pytest.mark.parametrize("secure", [None, "auto", "false"])
def test_samesite_none_without_secure_is_refused_in_one_line(secure):
    env = {"TOKENGATE_COOKIE_SAMESITE": "None"}
    if secure:
        env["TOKENGATE_COOKIE_SECURE"] = secure
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env, dotenv=None)
    assert len(str(info.value).splitlines()) == 1
    assert str(info.value).startswith("TOKENGATE_COOKIE_SAMESITE: None needs")
    env["TOKENGATE_COOKIE_SECURE"] = "true"
    assert Settings.from_env(env, dotenv=None).cookie_samesite == "None"


def test_access_ttl_longer_than_refresh_ttl_is_refused():
    with pytest.raises(SettingsError, match="TOKENGATE_ACCESS_TTL"):
        Settings.from_env({"TOKENGATE_ACCESS_TTL": "100", "TOKENGATE_REFRESH_TTL": "50"}, None)


def test_dotenv_is_read_and_the_environment_wins(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("TOKENGATE_ACCESS_TTL=42\nTOKENGATE_ISSUER=from-file\n")
    s = Settings.from_env({"TOKENGATE_ISSUER": "from-env"}, dotenv=dotenv)
    assert s.access_ttl == 42 and s.issuer == "from-env"


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().access_ttl = 1  # type: ignore[misc]


def test_cluster_and_proxy_settings_are_checked():
    s = Settings.from_env(
        {"TOKENGATE_REDIS_CLUSTER": "true", "TOKENGATE_REDIS_URL": "redis://10.0.0.5:7000"}, None
    )
    assert s.redis_cluster and s.redis_url == "redis://10.0.0.5:7000"
    bad = [
        {"TOKENGATE_REDIS_CLUSTER": "true"},
        {"TOKENGATE_REDIS_CLUSTER": "true", "TOKENGATE_REDIS_URL": "unix:///tmp/r.sock"},
        {"TOKENGATE_REDIS_CLUSTER": "true", "TOKENGATE_REDIS_URL": "redis://h:7000/3"},
        {"TOKENGATE_REDIS_URL": "redis://h:7000,h:7001"},
        {"TOKENGATE_TRUSTED_PROXIES": "10.0.0.0/8, a-balancer"},
    ]
    for env in bad:
        with pytest.raises(SettingsError) as info:
            Settings.from_env(env, dotenv=None)
        assert len(str(info.value).splitlines()) == 1, info.value
