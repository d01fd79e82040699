"""Another service checks our tokens with Authlib: introspection (RFC 7662) and revocation
(RFC 7009), over HTTP against the real service process."""

from __future__ import annotations

import httpx
import pytest
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc6750 import InsufficientScopeError, InvalidTokenError
from authlib.oauth2.rfc7662 import IntrospectTokenValidator

from quart_tokengate.client import AuthClient
from tests.support import ServiceProcess, service_env


@pytest.fixture
def service(tmp_path, private_redis):
    env = service_env(tmp_path, private_redis.url, introspection_clients="notes-api:s3cret-notes")
    process = ServiceProcess(env, tmp_path)
    process.start()
    yield process
    process.stop()


class TokengateIntrospection(IntrospectTokenValidator):
    """What a resource server built on Authlib writes: introspect through tokengate."""

    def __init__(self, base_url: str, client_id: str, secret: str) -> None:
        super().__init__()
        self.url = base_url + "/auth/introspect"
        self.client = OAuth2Client(
            client_id, secret, token_endpoint_auth_method="client_secret_basic"
        )

    def introspect_token(self, token_string):
        response = self.client.introspect_token(self.url, token=token_string)
        response.raise_for_status()
        return response.json()


def test_a_resource_server_on_authlib_introspects_and_revokes(service):
    base = service.base_url
    with AuthClient(base_url=base) as api:
        api.post("/auth/register", json={"username": "alice", "password": "x" * 12})
        api.login("alice", "x" * 12)
        access = api.tokens.access_token
        refresh = api.tokens.refresh_token

    validator = TokengateIntrospection(base, "notes-api", "s3cret-notes")
    info = validator.authenticate_token(access)
    assert info["active"] is True and info["username"] == "alice"
    validator.validate_token(info, [], None)
    with pytest.raises(InsufficientScopeError):
        validator.validate_token(info, ["notes:write"], None)

    wrong = TokengateIntrospection(base, "notes-api", "not-the-secret")
    with pytest.raises(httpx.HTTPStatusError) as failed:
        wrong.authenticate_token(access)
    assert failed.value.response.status_code == 401
    assert failed.value.response.json()["error"] == "invalid_client"

    # RFC 7009 through Authlib's client: the refresh token's session ends.
    revoked = validator.client.revoke_token(base + "/auth/revoke", token=refresh)
    assert revoked.status_code == 200
    info = validator.authenticate_token(access)
    assert info == {"active": False}
    with pytest.raises(InvalidTokenError):
        validator.validate_token(info, [], None)
    me = httpx.get(base + "/auth/me", headers={"Authorization": f"Bearer {access}"})
    assert me.status_code == 401 and me.json()["error"] == "token_revoked"
