"""The account page: a small browser UI on cookie mode (see docs/browser.md)."""

from __future__ import annotations

from quart import Blueprint

account_bp = Blueprint("tokengate_account", __name__)
