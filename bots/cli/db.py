"""``imagine-bot db copy``: move an install's SQLite database into PostgreSQL (``core.storage.copy``).

    imagine-bot db copy --to postgresql://user:password@host:5432/dbname [--from PATH]

``--to`` may be left out when ``DATABASE_URL`` is set (a password on the command line is seen by ``ps``);
``--from`` defaults to ``IMAGINE_DB_PATH``. Stop the bot first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from imagine_bot.core.errors import ConfigError
from imagine_bot.core.settings import Settings
from imagine_bot.core.storage.url import DatabaseUrl


def add_db_parsers(sub: Any) -> None:
    p = sub.add_parser("db", help="the database: copy an SQLite install into PostgreSQL")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("copy", help="copy every table of the SQLite file into an empty PostgreSQL database")
    a.add_argument("--to", dest="to", metavar="URL",
                   help="postgresql://user:password@host:5432/dbname (default: DATABASE_URL)")
    a.add_argument("--from", dest="source", type=Path, metavar="PATH",
                   help="the SQLite file (default: IMAGINE_DB_PATH)")
    p.set_defaults(func=db_cmd)


def db_cmd(args: argparse.Namespace, settings: Settings) -> int:
    try:
        target = DatabaseUrl.parse(args.to) if args.to else settings.database_url
    except ValueError as exc:
        raise ConfigError("--to", str(exc)) from None
    if target is None:
        raise ConfigError("--to", "name the PostgreSQL database: --to postgresql://user:password@host:5432/dbname "
                                  "(or set DATABASE_URL)")
    try:
        from imagine_bot.core.storage.copy import CopyRefused, copy_sqlite_to_postgres
    except ImportError as exc:
        raise ConfigError("--to", f"PostgreSQL needs the postgres extra ({exc.name} is not installed): "
                                  "pip install 'imagine-bot[postgres]'") from None
    source = args.source or settings.IMAGINE_DB_PATH
    try:
        report = copy_sqlite_to_postgres(Path(source), target)
    except CopyRefused as refused:
        print(f"imagine-bot: db copy: {refused}", file=sys.stderr)
        return 1
    print("\n".join(report.lines()))
    print("next: set DATABASE_URL to it on every host and start the bot")
    return 0
