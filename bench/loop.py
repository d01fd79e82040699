"""The event loop the bench's servers run, loaded without importing tokengate.

``serve`` runs :func:`quart_tokengate.service.serving.new_event_loop`; the
bench's host apps must run the same loop, but the plain app's process must
not import tokengate (its package would load everything). This loads that
one module, which needs nothing of tokengate, from its file.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parent.parent / "service" / "serving.py"
_spec = importlib.util.spec_from_file_location("tokengate_serving", _PATH)
assert _spec is not None and _spec.loader is not None
serving = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serving)


def new_event_loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop = serving.new_event_loop()
    return loop
