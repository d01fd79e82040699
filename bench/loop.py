"""The event loop the bench's servers run: the one ``tokengate serve`` runs.

``serve`` runs :func:`quart_tokengate.service.serving.new_event_loop`; the bench's host
apps must run the same loop. ``quart_tokengate.service`` loads its names lazily, so this
imports ``serving`` and ``edge`` alone, not the extension (the plain app's process must
not load tokengate's routes, storage or settings).
"""

from __future__ import annotations

import asyncio

from quart_tokengate.service.serving import new_event_loop as _serving_loop


def new_event_loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop = _serving_loop()
    return loop
