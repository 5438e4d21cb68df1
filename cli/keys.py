"""`sentistream keys`: CURVE key pairs for off-host sockets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..engine.security import default_keys_dir, make_keys


def cmd_keys(args: Any) -> int:
    import sys

    keys_dir = Path(args.dir).expanduser() if args.dir else default_keys_dir()
    try:
        files = make_keys(keys_dir, force=args.force)
    except (FileExistsError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, path in files.items():
        print(f"{name:14s} {path}")
    print(
        "\nUse them with:\n  [transport]\n  curve = true            # or a non-loopback bind_host\n"
        f'  curve_keys_dir = "{keys_dir.resolve()}"\n'
        "Clients need server.key and a key pair whose public .key is in that directory."
    )
    return 0


def register_keys(subparsers) -> None:
    p = subparsers.add_parser("keys", help="make ZeroMQ CURVE key pairs (needed to bind a non-loopback address)")
    p.add_argument("--dir", default=None, help=f"where to write them (default: {default_keys_dir()})")
    p.add_argument("--force", action="store_true", help="replace existing keys in DIR")
    p.set_defaults(func=cmd_keys)
