"""Pure flows for credentials of programs: a request with an API key, and waiting out a 429.

In the manner of ``_flow.py``: generators that yield operations (``Send``,
``Sleep``) and do no I/O; the edges run them.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import httpx

from ._exceptions import LoginRequired, RateLimited
from ._flow import Op, Send, Sleep, error_code, make_replayable, retry_after

KEY_PREFIX = "tgk_"
Run = Callable[[], Generator[Op, Any, "httpx.Response | None"]]


def check_api_key(key: str) -> str:
    """``key`` if it looks like an API key (``tgk_``, 38 letters and digits); else ValueError."""
    if not (
        key.startswith(KEY_PREFIX) and len(key) == 42 and key[4:].isascii() and key[4:].isalnum()
    ):
        raise ValueError("an API key is tgk_ followed by 38 letters and digits")
    return key


def key_flow(request: httpx.Request, key: str) -> Generator[Op, Any, httpx.Response]:
    """A request with an API key: sent as is, never refreshed.

    A ``401`` (revoked, expired, unknown) raises ``LoginRequired`` at once:
    there is nothing to refresh, and only a new key helps.
    """
    request.headers["Authorization"] = f"Bearer {key}"
    response: httpx.Response = yield Send(request)
    if response.status_code == 401:
        code = error_code(response)
        raise LoginRequired(
            f"The service refused the API key ({code}): make a new one.",
            code=code,
            response=response,
        )
    return response


def rate_limited(response: httpx.Response) -> RateLimited:
    """The ``RateLimited`` for a ``429``, with the service's ``Retry-After``."""
    wait = retry_after(response)
    code = error_code(response)
    later = f"try again in {wait:g}s" if wait is not None else "try again later"
    return RateLimited(
        f"Too many requests (429 {code}): {later}.", code=code, response=response, retry_after=wait
    )


def limit_flow(
    run: Run, request: httpx.Request, wait_limit: float
) -> Generator[Op, Any, httpx.Response | None]:
    """Run a request's flow; a ``429`` raises ``RateLimited``, unless its ``Retry-After``
    is at most ``wait_limit`` seconds: then it waits and sends once more."""
    resendable = make_replayable(request)
    response = yield from run()
    if response is None or response.status_code != 429:
        return response
    wait = retry_after(response)
    if wait is None or wait > wait_limit or not resendable:
        raise rate_limited(response)
    yield Sleep(wait)
    response = yield from run()
    if response is not None and response.status_code == 429:
        raise rate_limited(response)
    return response
