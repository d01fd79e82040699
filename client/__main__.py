"""tokengate-client: log in to a tokengate service and send authenticated requests.

The tokens and the service's address are kept in a token file:
$XDG_CONFIG_HOME/tokengate/tokens.json (~/.config/tokengate/tokens.json when
that is unset), or the file --token-file names.

`login --device` logs in with no password on this machine (RFC 8628): it
prints an address and a code, a person confirms the code in a browser on any
other machine, and the tokens are stored here.

`login --dpop` binds the tokens to a key kept in the token file (DPoP, RFC
9449; needs pip install "quart-tokengate[dpop]"): a copy of the tokens is of
no use without the key. The other commands sign their requests with it by
themselves; they take --dpop too.

Exit status: 0 done; 1 failed; 2 bad arguments; 3 not logged in (run
tokengate-client login); 130 interrupted (Ctrl-C); 141 the output pipe was
closed (e.g. | head -1).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from ._client import AuthClient
from ._dpop import DPoPUnavailable
from ._exceptions import AuthError, InvalidCredentials, LoginRequired
from ._store import FileTokenStore
from ._tokens import Tokens, unverified_claims

PROG = "tokengate-client"
EXIT_FAILED = 1
EXIT_NOT_LOGGED_IN = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE, what a shell tool killed by a closed pipe returns
NOT_LOGGED_IN = f"not logged in: run `{PROG} login`"


# With this set, ``request`` sends the API key instead of the stored session.
API_KEY_VARIABLE = "TOKENGATE_API_KEY"


def default_token_file() -> Path:
    """``$XDG_CONFIG_HOME/tokengate/tokens.json``, else under ``~/.config``."""
    config = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(config) if config and Path(config).is_absolute() else Path.home() / ".config"
    return base / "tokengate" / "tokens.json"


def fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def not_logged_in(reason: str | None = None) -> int:
    why = f" (the session ended: {reason})" if reason else ""
    return fail(NOT_LOGGED_IN + why, EXIT_NOT_LOGGED_IN)


def explain(exc: AuthError) -> str:
    if isinstance(exc, InvalidCredentials):
        return "the username or password is wrong"
    return str(exc)


def failed(exc: AuthError) -> int:
    """The exit for an ``AuthError``: ``3`` when the session is over, else ``1``."""
    if isinstance(exc, LoginRequired):
        return not_logged_in(exc.code)
    return fail(explain(exc))


# The guard's answers after which only a new login helps (CONTRACT section 3).
SESSION_OVER = frozenset(
    {"missing_token", "invalid_token", "token_revoked", "session_expired",
     "session_replaced", "refresh_reused"}
)  # fmt: skip


def session_over(response: httpx.Response) -> str | None:
    """The guard's code when ``response`` says the session is over, else ``None``."""
    if response.status_code != 401:
        return None
    try:
        code = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    return code if code in SESSION_OVER else None


def emit(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def utc_time(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def cmd_login(args: argparse.Namespace, store: FileTokenStore) -> int:
    if args.device_login:
        return cmd_login_device(args, store)
    if args.username is None:
        return fail("login needs --username, or --device for a device login", 2)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"Password for {args.username}: ")
    try:
        with AuthClient(base_url=args.base_url, token_store=store, dpop=args.dpop) as api:
            tokens = api.login(args.username, password, device=args.device)
    except AuthError as exc:
        return fail(explain(exc))
    except httpx.HTTPError as exc:
        return fail(f"could not reach {args.base_url}: {exc}")
    store.base_url = args.base_url
    if args.json_output:
        emit(describe(tokens, args.base_url, store.path))
    else:
        print(f"logged in as {args.username} (session {tokens.session_id}); tokens in {store.path}")
    return 0


def _client_for_request(base_url: str, store: FileTokenStore, dpop: bool) -> AuthClient:
    """The stored session's client, or an API key's when ``TOKENGATE_API_KEY`` is set."""
    api_key = os.environ.get(API_KEY_VARIABLE, "").strip()
    if api_key:
        return AuthClient(base_url=base_url, api_key=api_key, dpop=dpop)
    return AuthClient(base_url=base_url, token_store=store, dpop=dpop)


def cmd_login_device(args: argparse.Namespace, store: FileTokenStore) -> int:
    """The device login: show the address and the code, wait, store the tokens."""
    out = sys.stderr if args.json_output else sys.stdout
    name = args.device or f"{PROG} on {socket.gethostname()}"[:200]

    def on_code(uri: str, complete: str, code: str) -> None:
        print(f"To log in, open {uri} in a browser on any machine and enter the code:", file=out)
        print(f"\n    {code}\n", file=out)
        print(f"Or open {complete}", file=out)
        print("Waiting for the confirmation (Ctrl-C to stop)...", file=out, flush=True)

    try:
        with AuthClient(base_url=args.base_url, token_store=store, dpop=args.dpop) as api:
            tokens = api.login_device(on_code, device=name, client_id=PROG)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; not logged in", file=sys.stderr)
        return EXIT_INTERRUPTED
    except AuthError as exc:
        return fail(explain(exc))
    except httpx.HTTPError as exc:
        return fail(f"could not reach {args.base_url}: {exc}")
    store.base_url = args.base_url
    info = describe(tokens, args.base_url, store.path)
    if args.json_output:
        emit(info)
    else:
        print(
            f"logged in as {info['username']} (session {tokens.session_id}); tokens in {store.path}"
        )
    return 0


def cmd_request(args: argparse.Namespace, store: FileTokenStore) -> int:
    base_url = args.base_url or store.base_url
    keyed = bool(os.environ.get(API_KEY_VARIABLE, "").strip())
    if keyed and not base_url:
        return fail(f"--base-url is required with {API_KEY_VARIABLE}")
    if not base_url or (not keyed and store.load() is None):
        return not_logged_in()
    body: Any = None
    if args.json is not None:
        try:
            body = json.loads(args.json)
        except ValueError as exc:
            return fail(f"--json is not valid JSON: {exc}")
    try:
        api = _client_for_request(base_url, store, args.dpop)
    except ValueError as exc:
        return fail(f"{API_KEY_VARIABLE}: {exc}")
    try:
        with api:
            response = api.request(args.method.upper(), args.path, json=body)
    except AuthError as exc:
        return failed(exc)
    except httpx.HTTPError as exc:
        return fail(f"could not reach {base_url}: {exc}")
    if response.content:
        try:
            print(json.dumps(response.json(), indent=2, ensure_ascii=False))
        except ValueError:
            print(response.text)
    reason = session_over(response)
    if reason is not None:
        return not_logged_in(reason)
    if response.is_error:
        return fail(f"{response.status_code} {response.reason_phrase}")
    return 0


def cmd_logout(args: argparse.Namespace, store: FileTokenStore) -> int:
    base_url = args.base_url or store.base_url
    if not base_url or store.load() is None:
        if args.json_output:
            emit({"logged_in": False})
        else:
            print("not logged in")
        return 0
    try:
        with AuthClient(base_url=base_url, token_store=store, dpop=args.dpop) as api:
            api.logout()
    except AuthError as exc:
        return failed(exc)
    except httpx.HTTPError as exc:
        return fail(f"could not reach {base_url}: {exc}")
    if args.json_output:
        emit({"logged_in": False, "server": base_url})
    else:
        print("logged out")
    return 0


def describe(tokens: Tokens, base_url: str, path: Path) -> dict[str, Any]:
    """What a script wants to know about the stored session (never the tokens)."""
    access = unverified_claims(tokens.access_token)
    refresh = unverified_claims(tokens.refresh_token)
    return {
        "logged_in": True,
        "server": base_url,
        "username": access.get("name"),
        "user_id": access.get("sub"),
        "session_id": tokens.session_id or access.get("sid"),
        "token_type": tokens.token_type,
        "access_expires_at": utc_time(tokens.expires_at),
        "refresh_expires_at": utc_time(refresh.get("exp")),
        "token_file": str(path),
    }


def cmd_status(args: argparse.Namespace, store: FileTokenStore) -> int:
    """Who is logged in, on which server, until when; the server is asked, not assumed."""
    base_url = args.base_url or store.base_url
    if not base_url or store.load() is None:
        if args.json_output:
            emit({"logged_in": False})
        return not_logged_in()
    try:
        with AuthClient(base_url=base_url, token_store=store, dpop=args.dpop) as api:
            me = api.get("/auth/me")  # refreshed on the way if need be
    except LoginRequired as exc:
        reason: str | None = exc.code
    except AuthError as exc:
        return fail(explain(exc))
    except httpx.HTTPError as exc:
        return fail(f"could not reach {base_url}: {exc}")
    else:
        reason = session_over(me)
        if reason is None and me.is_error:
            return fail(f"{base_url} answered {me.status_code} {me.reason_phrase}")
    if reason is not None:
        if args.json_output:
            emit({"logged_in": False, "server": base_url, "reason": reason})
        return not_logged_in(reason)
    tokens = store.load()
    if tokens is None:  # another process logged out meanwhile
        return not_logged_in()
    info = describe(tokens, base_url, store.path)
    if args.json_output:
        emit(info)
        return 0
    print(f"logged in as {info['username']} (user {info['user_id']}) on {base_url}")
    print(f"session {info['session_id']}: refreshable until {info['refresh_expires_at']}")
    print(f"access token valid until {info['access_expires_at']}; tokens in {store.path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--token-file",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"where the tokens live (default {default_token_file()})",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    login = sub.add_parser("login", parents=[common], help="log in and store the tokens")
    login.add_argument("--base-url", required=True, help="the service, e.g. http://127.0.0.1:8000")
    login.add_argument("--username", default=None, help="log in with this user's password")
    login.add_argument(
        "--device",
        nargs="?",
        const="",
        default=None,
        metavar="NAME",
        help="a name for this session; without --username, log in by a code confirmed "
        "in a browser elsewhere (device login)",
    )
    login.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    login.set_defaults(func=cmd_login)

    request = sub.add_parser(
        "request", parents=[common], help="send one authenticated request, print the JSON"
    )
    request.add_argument("method", help="GET, POST, PUT, PATCH, DELETE...")
    request.add_argument("path", help="e.g. /auth/me")
    request.add_argument("--json", default=None, help="a JSON request body")
    request.add_argument("--base-url", default=None, help="override the stored base URL")
    request.set_defaults(func=cmd_request)

    logout = sub.add_parser("logout", parents=[common], help="end the session, forget the tokens")
    logout.add_argument("--base-url", default=None, help="override the stored base URL")
    logout.set_defaults(func=cmd_logout)

    status = sub.add_parser(
        "status", parents=[common], help="who is logged in, on which server, until when"
    )
    status.add_argument("--base-url", default=None, help="override the stored base URL")
    status.set_defaults(func=cmd_status)

    for command in (login, request, logout, status):
        command.add_argument(
            "--dpop",
            action="store_true",
            help="bind the tokens to a key kept in the token file (DPoP, RFC 9449); "
            "tokens bound at login are signed for whether this is given or not",
        )
    for command in (login, logout, status):
        command.add_argument(
            "--json",
            dest="json_output",
            action="store_true",
            help="print one JSON object, for scripts",
        )

    args = parser.parse_args(argv)
    if args.command == "login":
        # --device alone, or --device NAME without --username: the device login.
        args.device_login = args.device is not None and args.username is None
        args.device = args.device or None
    store = FileTokenStore(getattr(args, "token_file", None) or default_token_file())
    try:
        result: int = args.func(args, store)
        sys.stdout.flush()
    except DPoPUnavailable as exc:  # --dpop without the extra: one line, no traceback
        return fail(str(exc))
    except KeyboardInterrupt:  # Ctrl-C: a line, never a traceback
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (| head -1): stop quietly. Python would print
        # another error flushing stdout at exit, so point it at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_CLOSED_PIPE
    return result


if __name__ == "__main__":
    raise SystemExit(main())
