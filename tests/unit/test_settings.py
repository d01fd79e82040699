"""Settings: one frozen object, every contract variable, one line per bad value."""

import dataclasses
from pathlib import Path

import pytest

from quart_tokengate.service.settings import Settings, SettingsError

KEK = "q" * 42 + "o"  # 32 bytes in base64url
OLD_KEK = "A" * 42 + "E"


def test_defaults_match_the_contract():
    s = Settings.from_env({}, dotenv=None)
    assert (s.issuer, s.audience) == ("tokengate", "tokengate")
    assert (s.access_ttl, s.refresh_ttl, s.idle_timeout) == (300, 1_296_000, 1800)
    assert (s.session_max_age, s.refresh_grace, s.max_sessions) == (2_592_000, 10, 0)
    assert s.token_location == ("headers",)
    assert s.implicit_refresh is False and s.allow_registration is True
    # Implicit refresh renews a token within the refresh grace after exp, unless told.
    assert s.implicit_refresh_window is None and s.renewal_window == s.refresh_grace == 10
    assert Settings(refresh_grace=3).renewal_window == 3
    assert (s.leeway, s.password_min_length) == (0, 8)
    assert (s.login_max_failures, s.login_window, s.reset_ttl) == (10, 900, 900)
    assert s.instance_dir == Path("instance")
    assert s.redis_url is None and s.secret_key is None
    assert s.sqlalchemy_url.startswith("sqlite+aiosqlite:///")
    assert s.sqlalchemy_url.endswith("instance/tokengate.db")
    assert s.near_cache is None  # auto: on where Redis is seen to allow it


@pytest.mark.parametrize(
    ("raw", "value"), [("auto", None), ("AUTO", None), ("true", True), ("on", True), ("0", False)]
)
def test_near_cache_is_auto_or_a_boolean(raw: str, value: bool | None) -> None:
    assert Settings.from_env({"TOKENGATE_NEAR_CACHE": raw}, dotenv=None).near_cache is value


def test_near_cache_refuses_anything_else() -> None:
    with pytest.raises(ValueError, match=r"TOKENGATE_NEAR_CACHE.*auto, true or false"):
        Settings.from_env({"TOKENGATE_NEAR_CACHE": "sometimes"}, dotenv=None)


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
        "TOKENGATE_IMPLICIT_REFRESH_WINDOW": "20",
        "TOKENGATE_LEEWAY": "2",
        "TOKENGATE_ALLOW_REGISTRATION": "false",
        "TOKENGATE_PASSWORD_MIN_LENGTH": "12",
        "TOKENGATE_LOGIN_MAX_FAILURES": "3",
        "TOKENGATE_LOGIN_WINDOW": "60",
        "TOKENGATE_RESET_TTL": "120",
        "TOKENGATE_ADDRESS_MAX_FAILURES": "7",
        "TOKENGATE_ADDRESS_MAX_REGISTRATIONS": "0",
        "TOKENGATE_ADDRESS_MAX_RESETS": "5",
        "TOKENGATE_DEVICE_TOKEN_TTL": "86400",
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
        "TOKENGATE_NEAR_CACHE": "false",
        "TOKENGATE_API_KEYS": "off",
        "TOKENGATE_API_KEY_TTL": "3600",
        "TOKENGATE_API_KEY_MAX_TTL": "86400",
        "TOKENGATE_RATE_LIMIT": "100/60",
        "TOKENGATE_HEADER_TIMEOUT": "5",
        "TOKENGATE_BODY_TIMEOUT": "7",
        "TOKENGATE_MAX_CONNECTIONS": "250",
        "TOKENGATE_KEY_ENCRYPTION_KEY": KEK,
        "TOKENGATE_OLD_KEY_ENCRYPTION_KEY": f"{OLD_KEK}, {KEK}=",
        "TOKENGATE_DPOP": "off",
        "TOKENGATE_DPOP_ALGORITHMS": "ES256",
        "TOKENGATE_DPOP_MAX_AGE": "20",
        "TOKENGATE_DPOP_NONCE": "false",
        "TOKENGATE_DEVICE_CODE_TTL": "300",
        "TOKENGATE_DEVICE_POLL_INTERVAL": "0",
    }
    s = Settings.from_env(env, dotenv=None)
    assert s.key_encryption_key == KEK and s.old_key_encryption_key == (OLD_KEK, KEK + "=")
    assert KEK not in repr(s) and OLD_KEK not in repr(s)
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
    assert s.implicit_refresh_window == s.renewal_window == 20
    assert (s.password_min_length, s.login_max_failures, s.login_window, s.reset_ttl) == (
        12, 3, 60, 120,
    )  # fmt: skip
    assert (s.address_max_failures, s.address_max_registrations, s.address_max_resets) == (7, 0, 5)
    assert s.device_token_ttl == 86400
    assert s.instance_dir == Path("/tmp/tg")
    assert s.sqlalchemy_url == "postgresql+asyncpg://u@h/db"
    assert s.redis_url == "redis://127.0.0.1:6379/3" and not s.redis_cluster
    assert s.trusted_proxies == ("10.0.0.0/8", "192.168.1.7/32", "::1/128")
    assert s.redis_url == "redis://127.0.0.1:6379/3"
    assert s.log_format == "json"
    assert s.near_cache is False
    assert (s.api_keys, s.api_key_ttl, s.api_key_max_ttl) == (False, 3600, 86400)
    assert s.rate_limit == (100, 60)
    assert (s.header_timeout, s.body_timeout, s.max_connections) == (5, 7, 250)
    assert (s.dpop, s.dpop_algorithms, s.dpop_max_age, s.dpop_nonce) == (
        "off",
        ("ES256",),
        20,
        False,
    )
    assert (s.device_code_ttl, s.device_poll_interval) == (300, 0)
    names = {f"TOKENGATE_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    assert names == set(env)


def test_every_bad_value_is_named_on_its_own_line():
    env = {
        "TOKENGATE_ACCESS_TTL": "five minutes",
        "TOKENGATE_IMPLICIT_REFRESH": "maybe",
        "TOKENGATE_TOKEN_LOCATION": "query",
        "TOKENGATE_REDIS_URL": "localhost:6379",
        "TOKENGATE_LEEWAY": "-1",
        "TOKENGATE_IMPLICIT_REFRESH_WINDOW": "a minute",
        "TOKENGATE_LOG_FORMAT": "xml",
        "TOKENGATE_ACESS_TTL": "60",
        "TOKENGATE_HEADER_TIMEOUT": "0",
        "TOKENGATE_BODY_TIMEOUT": "soon",
        "TOKENGATE_MAX_CONNECTIONS": "0",
        "TOKENGATE_ADDRESS_MAX_FAILURES": "-3",
        "TOKENGATE_ADDRESS_MAX_RESETS": "ten",
        "TOKENGATE_DEVICE_TOKEN_TTL": "0",
        "TOKENGATE_DEVICE_CODE_TTL": "0",
        "TOKENGATE_DEVICE_POLL_INTERVAL": "-5",
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


@pytest.mark.parametrize(
    "value",
    ["q" * 42, "q" * 44, "q" * 42 + "!", "short", "é" * 43, "q" * 42 + "r"],
)
def test_a_key_encryption_key_that_is_not_32_bytes_of_base64url_is_refused_without_echo(value):
    for name in ("TOKENGATE_KEY_ENCRYPTION_KEY", "TOKENGATE_OLD_KEY_ENCRYPTION_KEY"):
        with pytest.raises(SettingsError) as info:
            Settings.from_env({name: value}, dotenv=None)
        [line] = info.value.problems
        assert line.startswith(f"{name}: expected 32 bytes in base64url")
        assert value not in line


def test_dpop_defaults_match_the_contract():
    s = Settings.from_env({}, dotenv=None)
    assert (s.dpop, s.dpop_algorithms, s.dpop_max_age, s.dpop_nonce) == (
        "allowed", ("ES256", "EdDSA"), 60, False,
    )  # fmt: skip


def test_dpop_settings_are_read():
    env = {
        "TOKENGATE_DPOP": "Allowed",
        "TOKENGATE_DPOP_ALGORITHMS": "eddsa, ES256 ps256 EdDSA",
        "TOKENGATE_DPOP_MAX_AGE": "30",
        "TOKENGATE_DPOP_NONCE": "false",
    }
    s = Settings.from_env(env, dotenv=None)
    assert (s.dpop, s.dpop_algorithms, s.dpop_max_age, s.dpop_nonce) == (
        "allowed", ("EdDSA", "ES256", "PS256"), 30, False,
    )  # fmt: skip
    assert Settings.from_env({"TOKENGATE_DPOP": "off"}, dotenv=None).dpop == "off"


@pytest.mark.parametrize(
    ("name", "raw", "says"),
    [
        ("TOKENGATE_DPOP", "on", "expected off, allowed or required"),
        ("TOKENGATE_DPOP_ALGORITHMS", "none", "never none nor an HMAC"),
        ("TOKENGATE_DPOP_ALGORITHMS", "ES256 HS256", "never none nor an HMAC"),
        ("TOKENGATE_DPOP_ALGORITHMS", "hs512", "never none nor an HMAC"),
        ("TOKENGATE_DPOP_ALGORITHMS", "ES256K", "expected some of ES256"),
        ("TOKENGATE_DPOP_ALGORITHMS", " , ", "at least one algorithm"),
        ("TOKENGATE_DPOP_MAX_AGE", "0", "at least 1 second"),
        ("TOKENGATE_DPOP_MAX_AGE", "a minute", "whole seconds"),
        ("TOKENGATE_DPOP_NONCE", "sometimes", "true or false"),
    ],
)
def test_a_bad_dpop_setting_stops_start_up_in_one_line_naming_it(name, raw, says):
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: raw}, dotenv=None)
    (line,) = str(info.value).splitlines()
    assert line.startswith(name + ":")
    assert says in line


def test_dpop_algorithms_built_in_code_are_checked_too():
    with pytest.raises(SettingsError, match="TOKENGATE_DPOP_ALGORITHMS"):
        Settings(dpop_algorithms=("HS256",))
    with pytest.raises(SettingsError, match="TOKENGATE_DPOP:"):
        Settings(dpop="maybe")


def test_settings_know_the_same_dpop_algorithms_as_the_verifier():
    from quart_tokengate.service import dpop, settings

    assert set(settings.DPOP_ALGORITHMS) == set(dpop.SUPPORTED_ALGORITHMS)
    assert Settings().dpop_algorithms == dpop.DEFAULT_ALGORITHMS
    assert Settings().dpop_max_age == dpop.DEFAULT_MAX_AGE
