"""The README's curl walk-through, against the real process."""

import httpx


def test_register_login_me_logout(service):
    with httpx.Client(base_url=service.base_url) as http:
        r = http.post("/auth/register", json={"username": "alice", "password": "correct horse"})
        assert r.status_code == 201
        r = http.post("/auth/login", json={"username": "alice", "password": "correct horse"})
        assert r.status_code == 200
        pair = r.json()
        assert set(pair) == {
            "access_token", "refresh_token", "token_type", "expires_in",
            "refresh_expires_in", "session_id", "device_token",
        }  # fmt: skip
        auth = {"Authorization": f"Bearer {pair['access_token']}"}
        me = http.get("/auth/me", headers=auth)
        assert me.status_code == 200
        assert me.json()["username"] == "alice"
        assert http.post("/auth/logout", headers=auth).status_code == 204
        r = http.get("/auth/me", headers=auth)
        assert r.status_code == 401
        assert r.json()["error"] == "token_revoked"
