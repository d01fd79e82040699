"""Token stores: the file's format, mode, atomic writes, lock and refresh lease."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time

import filelock
import pytest

from quart_tokengate.client import AuthError, FileTokenStore, MemoryTokenStore
from quart_tokengate.client._tokens import KEEP, Lease, Tokens, unverified_claims

from .test_client_flow import jwt


def pair(name: str, exp: float | None = None) -> Tokens:
    now = time.time()
    exp = now + 300 if exp is None else exp
    return Tokens(jwt(exp, exp - 300, jti=name), f"refresh-{name}", session_id="s1")


def always(_: Tokens) -> bool:
    return True


def test_tokens_read_their_expiry_and_hide_in_reprs():
    tokens = pair("a", exp=1_800_000_300)
    assert tokens.expires_at == 1_800_000_300 and tokens.issued_at == 1_800_000_000
    assert tokens.access_token not in repr(tokens) and tokens.refresh_token not in repr(tokens)
    assert Tokens.from_json(tokens.to_json()) == tokens
    with pytest.raises(ValueError):
        Tokens.from_json({"access_token": "x"})
    assert unverified_claims("not-a-jwt") == {} and unverified_claims("a.!!!.c") == {}
    assert Tokens("opaque", "r").expires_at is None


def test_memory_store():
    tokens = pair("a")
    store = MemoryTokenStore(tokens.to_json())
    assert store.load() == tokens
    assert tokens.access_token not in repr(store)
    store.save(None)
    assert store.load() is None


def test_file_store_round_trip_mode_and_base_url(tmp_path):
    path = tmp_path / "config" / "tokengate" / "tokens.json"
    store = FileTokenStore(path)
    assert store.load() is None and store.base_url is None
    store.base_url = "http://127.0.0.1:8000"
    tokens = pair("a")
    store.save(tokens)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.with_name("tokens.json.lock").stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert FileTokenStore(path).load() == tokens
    assert store.base_url == "http://127.0.0.1:8000"  # kept across token writes
    data = json.loads(path.read_text())
    assert data["tokens"]["refresh_token"] == tokens.refresh_token and data["version"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokens.json", "tokens.json.lock"]
    assert str(path) in repr(store) and tokens.access_token not in repr(store)


@pytest.mark.parametrize("make", [lambda path: MemoryTokenStore(), FileTokenStore])
def test_device_tokens_are_kept_per_account_and_outlive_a_logout(tmp_path, make):
    store = make(tmp_path / "tokens.json")
    assert store.device_token("alice") is None
    store.save(pair("a"))
    store.keep_device_token("alice", "device-a")
    store.keep_device_token("bob", "device-b")
    store.save(None)  # a logout clears the pair, not the device
    store.keep_device_token("alice", "device-a2")
    assert (store.device_token("alice"), store.device_token("bob")) == ("device-a2", "device-b")
    assert "device-a2" not in repr(store)


def test_the_file_format_stays_readable_both_ways(tmp_path):
    path = tmp_path / "tokens.json"
    tokens = pair("a")
    # A file written before device tokens existed reads as it did.
    path.write_text(json.dumps({"version": 1, "tokens": tokens.to_json(), "base_url": "http://x"}))
    store = FileTokenStore(path)
    assert store.load() == tokens and store.device_token("alice") is None
    store.keep_device_token("alice", "device-a")
    # The same version, the pair where it was: an older client reads the file as
    # before, and rewriting only "tokens" (as it does) keeps the device tokens.
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["tokens"] == tokens.to_json()
    assert data["device_tokens"] == {"alice": "device-a"}
    store.save(pair("b"))
    assert FileTokenStore(path).device_token("alice") == "device-a"


def test_file_store_sees_another_writer(tmp_path):
    path = tmp_path / "tokens.json"
    mine, theirs = FileTokenStore(path), FileTokenStore(path)
    mine.save(pair("a"))
    assert mine.load() == pair_from(path)
    theirs.save(pair("b"))
    assert mine.load() == theirs.load() == pair_from(path)


def pair_from(path) -> Tokens:
    return Tokens.from_json(json.loads(path.read_text())["tokens"])


def test_a_corrupt_file_reads_as_empty(tmp_path, caplog):
    path = tmp_path / "tokens.json"
    path.write_text("{not json")
    assert FileTokenStore(path).load() is None
    assert "not valid JSON" in caplog.text


def test_readers_never_see_half_a_file(tmp_path):
    path = tmp_path / "tokens.json"
    writer, reader = FileTokenStore(path), FileTokenStore(path)
    writer.save(pair("0"))
    stop = threading.Event()

    def write() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            writer.save(pair(str(n)))

    thread = threading.Thread(target=write)
    thread.start()
    try:
        for _ in range(300):
            assert reader.load() is not None
            json.loads(path.read_bytes())
    finally:
        stop.set()
        thread.join()
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_a_held_lock_times_out_as_an_auth_error(tmp_path):
    path = tmp_path / "tokens.json"
    store = FileTokenStore(path, lock_timeout=0.1)
    with filelock.FileLock(f"{path}.lock"), pytest.raises(AuthError, match="Could not lock"):
        store.save(pair("a"))


# -- the refresh lease ----------------------------------------------------------------
def test_one_process_leases_the_refresh_and_the_other_waits_for_its_result(tmp_path):
    path = tmp_path / "tokens.json"
    first, second = FileTokenStore(path), FileTokenStore(path)
    old, new = pair("old"), pair("new")
    first.save(old)
    lease = first.begin_refresh(old, always)
    assert isinstance(lease, Lease) and lease.tokens == old
    assert isinstance(second.begin_refresh(old, always), float)  # busy: ask again later
    first.end_refresh(lease, new)
    assert second.begin_refresh(old, always) == new  # newer than what failed: use it
    assert json.loads(path.read_text())["refresh_lease"] is None


def test_newer_tokens_that_are_expiring_are_refreshed_not_adopted(tmp_path):
    store = FileTokenStore(tmp_path / "tokens.json")
    newer = pair("newer")
    store.save(newer)
    lease = store.begin_refresh(pair("old"), lambda tokens: False)
    assert isinstance(lease, Lease) and lease.tokens == newer  # refresh the newest refresh token


def test_a_lease_left_by_a_dead_process_or_past_its_time_is_ignored(tmp_path):
    path = tmp_path / "tokens.json"
    store = FileTokenStore(path)
    old = pair("old")
    store.save(old)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    data = json.loads(path.read_text())
    data["refresh_lease"] = {"id": "x", "pid": int(dead.stdout), "host": os.uname().nodename,
                             "until": time.time() + 60}  # fmt: skip
    path.write_text(json.dumps(data))
    assert isinstance(store.begin_refresh(old, always), Lease)

    data = json.loads(path.read_text())
    data["refresh_lease"] = {"id": "y", "pid": os.getpid(), "host": "elsewhere", "until": 1.0}
    path.write_text(json.dumps(data))
    assert isinstance(FileTokenStore(path).begin_refresh(old, always), Lease)


def test_a_refresh_result_does_not_overwrite_a_login_made_meanwhile(tmp_path):
    store = FileTokenStore(tmp_path / "tokens.json")
    old, refreshed, logged_in = pair("old"), pair("refreshed"), pair("login")
    store.save(old)
    lease = store.begin_refresh(old, always)
    assert isinstance(lease, Lease)
    store.save(logged_in)
    store.end_refresh(lease, refreshed)
    assert store.load() == logged_in


@pytest.mark.parametrize("make", [MemoryTokenStore, None], ids=["memory", "file"])
def test_end_refresh_keeps_or_clears(tmp_path, make):
    store = make() if make else FileTokenStore(tmp_path / "tokens.json")
    old = pair("old")
    store.save(old)
    lease = store.begin_refresh(old, always)
    assert isinstance(lease, Lease)
    store.end_refresh(lease, KEEP)
    assert store.load() == old
    lease = store.begin_refresh(old, always)
    assert isinstance(lease, Lease)
    store.end_refresh(lease, None)
    assert store.load() is None


@pytest.mark.parametrize("make", [MemoryTokenStore, None], ids=["memory", "file"])
@pytest.mark.parametrize("outcome", ["refreshed", "refused"])
def test_a_pushed_access_token_during_a_refresh_does_not_discard_its_result(
    tmp_path, make, outcome
):
    # The service pushes a new access token (X-Access-Token) for the same
    # session while the refresh is on the wire: the pair's refresh token is
    # still the one being refreshed, so the refresh's result must land (the
    # old refresh token is retired by now), and a refresh 401 must clear it.
    store = make() if make else FileTokenStore(tmp_path / "tokens.json")
    old, new = pair("old"), pair("new")
    store.save(old)
    lease = store.begin_refresh(old, always)
    assert isinstance(lease, Lease)
    store.update(lambda current: current.with_access_token(jwt(time.time() + 600, jti="pushed")))
    assert store.load() != old
    store.end_refresh(lease, new if outcome == "refreshed" else None)
    assert store.load() == (new if outcome == "refreshed" else None)


def test_the_file_keeps_when_the_tokens_arrived(tmp_path):
    path = tmp_path / "tokens.json"
    tokens = pair("a", exp=1_800_000_300).received(1_900_000_000.5)
    FileTokenStore(path).save(tokens)
    loaded = FileTokenStore(path).load()
    assert loaded is not None and loaded.received_at == 1_900_000_000.5
    assert loaded.local_expiry == 1_900_000_299.5
    assert json.loads(path.read_text())["tokens"]["received_at"] == 1_900_000_000.5
