"""``tokengate clients ...``: service accounts' OAuth clients, from the command line.

``create`` and ``rotate-secret`` print the secret once, on standard output
alone (the other lines go to standard error), so that a script can capture it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..admin_cli import CommandError, _print_json, _run, _table, _when

if TYPE_CHECKING:
    from ..app import TokenGate


def _registry(gate: TokenGate) -> Any:
    from .accounts import service_accounts

    return service_accounts(gate).registry


def _guarded(work: Callable[[TokenGate], Any]) -> Callable[[TokenGate], Any]:
    """``work``, its ``ClientError`` turned into the command's one line."""

    async def run(gate: TokenGate) -> int:
        from .clients import ClientError

        try:
            return int(await work(gate))
        except ClientError as exc:
            raise CommandError(str(exc)) from exc

    return run


def cmd_clients_create(args: argparse.Namespace) -> int:
    jwks = None
    if args.jwks_file is not None:
        try:
            jwks = Path(args.jwks_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"cannot read {args.jwks_file}: {exc}") from exc

    async def work(gate: TokenGate) -> int:
        client_id, secret = await _registry(gate).create(args.name, args.scope, jwks)
        print(f"created client {args.name}", file=sys.stderr)
        print(f"client_id: {client_id}")
        if secret is not None:
            print(f"client_secret: {secret}")
            print("the secret is shown this once; keep it somewhere safe", file=sys.stderr)
        return 0

    return _run(_guarded(work))


def cmd_clients_list(args: argparse.Namespace) -> int:
    async def work(gate: TokenGate) -> int:
        found = await _registry(gate).list()
        if args.json:
            _print_json([c.to_json() for c in found])
            return 0
        _table(
            [
                [
                    c.client_id,
                    c.name,
                    "disabled" if c.disabled else "active",
                    c.method,
                    " ".join(c.scopes) or "-",
                    str(c.secrets),
                    _when(c.created_at),
                ]
                for c in found
            ],
            ["CLIENT ID", "NAME", "STATUS", "AUTH", "SCOPES", "CREDENTIALS", "CREATED"],
        )
        return 0

    return _run(_guarded(work))


def cmd_clients_rotate_secret(args: argparse.Namespace) -> int:
    async def work(gate: TokenGate) -> int:
        secret = await _registry(gate).rotate_secret(args.client_id, args.keep_old)
        print(f"client_secret: {secret}")
        when = "now" if args.keep_old == 0 else f"in {args.keep_old} seconds"
        print(f"the older secrets of {args.client_id} stop working {when}", file=sys.stderr)
        return 0

    return _run(_guarded(work))


def _cmd_clients_disabled(disabled: bool) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        async def work(gate: TokenGate) -> int:
            await _registry(gate).set_disabled(args.client_id, disabled)
            if disabled:
                print(f"disabled {args.client_id}; its tokens are refused from now on")
            else:
                print(f"enabled {args.client_id}")
            return 0

        return _run(_guarded(work))

    return command


def add_client_commands(sub: Any) -> None:
    """Add ``clients ...`` to the ``tokengate`` command line."""
    clients = sub.add_parser("clients", help="service accounts (client-credentials grant)")
    clients_sub = clients.add_subparsers(dest="clients_command", required=True)
    create = clients_sub.add_parser("create", help="register a client; prints its secret once")
    create.add_argument("name")
    create.add_argument(
        "--scope",
        action="append",
        default=[],
        metavar="S",
        help="a scope the client may ask for (repeat for more)",
    )
    create.add_argument(
        "--jwks-file",
        metavar="FILE",
        help="the client's public keys (a JWKS): it uses private_key_jwt",
    )
    create.set_defaults(func=cmd_clients_create)
    listing = clients_sub.add_parser("list", help="list the clients")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_clients_list)
    rotate = clients_sub.add_parser(
        "rotate-secret", help="a new secret; the old ones (and their tokens) stop after --keep-old"
    )
    rotate.add_argument("client_id")
    rotate.add_argument(
        "--keep-old",
        type=int,
        default=0,
        metavar="SECONDS",
        help="how long the older secrets keep working (default 0)",
    )
    rotate.set_defaults(func=cmd_clients_rotate_secret)
    for name, disabled, text in (
        ("disable", True, "refuse the client's fetches and its live tokens"),
        ("enable", False, "allow a disabled client again"),
    ):
        command = clients_sub.add_parser(name, help=text)
        command.add_argument("client_id")
        command.set_defaults(func=_cmd_clients_disabled(disabled))
