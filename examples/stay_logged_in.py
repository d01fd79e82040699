"""A script that stays logged in for days.

The tokens live in a file (0600, atomic writes, shared safely by several
processes), so a run picks up where the last one stopped; the access token is
refreshed before it expires; and when the session is over (the refresh token
ran out, an administrator ended it, the password changed), ``credentials``
logs in again by itself. Only ``pip install quart-tokengate`` is needed.

    export TOKENGATE_BASE_URL=http://127.0.0.1:8000
    export TOKENGATE_USERNAME=alice TOKENGATE_PASSWORD='correct horse'
    python stay_logged_in.py --every 600          # forever, one request every 10 minutes
    python stay_logged_in.py --times 1            # once, e.g. from cron
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from quart_tokengate.client import AuthClient, AuthError, FileTokenStore


def credentials() -> tuple[str, str]:
    """Where the password comes from when the client must log in (again)."""
    return os.environ["TOKENGATE_USERNAME"], os.environ["TOKENGATE_PASSWORD"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--base-url", default=os.environ.get("TOKENGATE_BASE_URL", "http://127.0.0.1:8000")
    )
    parser.add_argument("--token-file", default="~/.config/stay_logged_in/tokens.json")
    parser.add_argument("--every", type=float, default=600.0, help="seconds between requests")
    parser.add_argument("--times", type=int, default=0, help="stop after this many (0: never)")
    args = parser.parse_args()

    store = FileTokenStore(Path(args.token_file).expanduser())
    with AuthClient(base_url=args.base_url, token_store=store, credentials=credentials) as api:
        done = 0
        while True:
            try:
                r = api.get("/auth/me")  # logged in, refreshed and retried as needed
                r.raise_for_status()
                me = r.json()
                print(f"signed in as {me['username']} (session {me['session_id']})", flush=True)
            except AuthError as exc:  # the service or the network is down: try again later
                print(f"not now: {exc}", flush=True)
            done += 1
            if args.times and done >= args.times:
                break
            time.sleep(args.every)


if __name__ == "__main__":
    main()
