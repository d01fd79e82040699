"""Cookie options: TOKENGATE_COOKIE_DOMAIN, _SAMESITE and _SECURE on every cookie set or cleared."""

from __future__ import annotations

import pytest

from quart_tokengate.service import Settings, create_app
from quart_tokengate.service.settings import SettingsError
from tests.integration.test_cookies import (
    COOKIE_NAMES,
    browser_headers,
    cookie_login,
    is_deleted,
    set_cookies,
)


@pytest.mark.parametrize(
    ("options", "secure"),
    [
        ({"cookie_domain": "example.com", "cookie_samesite": "Strict"}, False),
        ({"cookie_samesite": "None", "cookie_secure": "true"}, True),
        ({"cookie_secure": "true"}, True),
    ],
)
async def test_cookie_options_apply_to_every_cookie_set_and_cleared(make_app, options, secure):
    app = await make_app(token_location=("cookies", "headers"), **options)
    client = app.test_client(use_cookies=False)
    _, cookies = await cookie_login(client)
    r = await client.post(
        "/auth/logout", headers=browser_headers(cookies, cookies["csrf_token"].value)
    )
    assert r.status_code == 204
    cleared = set_cookies(r)
    assert set(cookies) == set(cleared) == COOKIE_NAMES
    assert all(is_deleted(m) for m in cleared.values())
    for morsel in (*cookies.values(), *cleared.values()):
        assert morsel["samesite"] == options.get("cookie_samesite", "Lax")
        assert bool(morsel["secure"]) is secure
        assert morsel["domain"] == options.get("cookie_domain", "")


async def test_cookie_secure_false_leaves_secure_off_even_over_https(make_app):
    app = await make_app(token_location=("cookies",), cookie_secure="false")
    client = app.test_client(use_cookies=False)
    _, cookies = await cookie_login(client, scheme="https", headers={"Host": "auth.example.com"})
    assert not any(m["secure"] for m in cookies.values())


def test_samesite_none_without_secure_stops_start_up():
    with pytest.raises(SettingsError) as info:
        create_app(Settings(cookie_samesite="None"))
    assert str(info.value).count("\n") == 0
    assert "TOKENGATE_COOKIE_SAMESITE" in str(info.value)
