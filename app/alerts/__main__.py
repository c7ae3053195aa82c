"""``python -m app.alerts keys create NAME | revoke ID_OR_PREFIX | list``: manage API keys of the
alerts store named by the settings (``CSH_ALERTS_URL``, default ``<data_dir>/alerts.sqlite``)."""

from __future__ import annotations

import argparse
import sys

from app.alerts.store import AlertStore
from app.config import Settings


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m app.alerts", description="Manage the alerts store.")
    sub = parser.add_subparsers(dest="area", required=True)
    keys = sub.add_parser("keys", help="API keys of the alert API").add_subparsers(dest="action", required=True)
    keys.add_parser("create", help="create a key and print its token once").add_argument("name")
    keys.add_parser("revoke", help="revoke a key by id or visible prefix").add_argument("ident")
    keys.add_parser("list", help="list keys (visible prefixes only)")
    args = parser.parse_args(argv)
    store = AlertStore(Settings().alerts_database_url)
    try:
        if args.action == "create":
            key, token = store.create_key(args.name)
            print(f"key {key.id} ({key.name}) created; its token, shown only now:\n{token}")
        elif args.action == "revoke":
            try:
                key = store.revoke_key(args.ident)
            except LookupError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
            print(f"key {key.id} ({key.prefix}...) revoked")
        else:
            for key in store.list_keys():
                state = "revoked" if key.revoked_at else "live"
                print(f"{key.id}\t{key.prefix}...\t{state}\t{key.created_at:%Y-%m-%d %H:%M}Z\t{key.name}")
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
