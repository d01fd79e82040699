"""The event loop the bench's servers run, loaded without importing tokengate.

``serve`` runs :func:`quart_tokengate.service.serving.new_event_loop`; the
bench's host apps must run the same loop, but the plain app's process must
not import tokengate (its package would load everything). This loads that
module and the one it imports (``edge``), which need nothing else of tokengate,
from their files.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import types
from pathlib import Path

_SERVICE = Path(__file__).resolve().parent.parent / "service"
# serving.py imports one sibling, edge.py (standard library only): both are loaded
# from their files into a package of their own, so that ``from .edge import`` works
# without the service's package (and everything its __init__ loads).
_PACKAGE = "_bench_tokengate_serving"
_package = types.ModuleType(_PACKAGE)
_package.__path__ = []
sys.modules[_PACKAGE] = _package


def _load(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"{_PACKAGE}.{name}", _SERVICE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_load("edge")
serving = _load("serving")


def new_event_loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop = serving.new_event_loop()
    return loop
