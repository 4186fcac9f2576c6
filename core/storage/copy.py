"""Moving an install from SQLite to PostgreSQL: ``imagine-bot db copy --to postgresql://...``.

Every table of the SQLite file (the ledger's whole history included) is copied into an empty PostgreSQL
database in one transaction (``COPY``, the fast path), the identity counters set past the copied ids, then
checked before the commit: the same number of rows in every table, and every balance and hold (of users and
of budgets) equal to the sum of its ledger rows. A failed check rolls everything back: the target stays
empty. A target that already holds any row is refused (a copy never merges into a live database).

Stop the bot first (or copy a backup of the file): rows written to the file during the copy would not be in
the target. The source is migrated to this version's schema first (as any start would), so both sides have
the same columns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from imagine_bot.core.storage.db import open_db, transaction
from imagine_bot.core.storage.postgres import PgDatabase, open_postgres
from imagine_bot.core.storage.url import DatabaseUrl

log = logging.getLogger(__name__)

#: tables other tables refer to (foreign keys) go first
PARENTS = ("accounts", "budgets", "jobs")
BATCH = 5000

#: (table, balance columns, ledger table, key, summed columns): what ``verify`` in the ledger and budgets checks
SUMS = (
    ("accounts", ("balance", "held"), "ledger", "account", ("delta_balance", "delta_held")),
    ("budgets", ("spent", "held"), "budget_ledger", "scope", ("delta_spent", "delta_held")),
)


class CopyRefused(Exception):
    """The copy was not made (the target is not empty, or a check failed): nothing was written."""


@dataclass
class CopyReport:
    source: Path
    target: str
    rows: dict[str, int] = field(default_factory=dict)
    balances_checked: int = 0

    def lines(self) -> list[str]:
        width = max(map(len, self.rows), default=0)
        return [f"copied {self.source} -> {self.target}",
                *(f"  {table:<{width}}  {count:>9,} rows" for table, count in self.rows.items()),
                f"checked: every table's row count, and {self.balances_checked:,} balances and holds against their"
                " ledger sums"]


def _tables(src: sqlite_utils.Database) -> list[str]:
    names = [r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE"
                                       " 'sqlite_%' AND name <> '_migrations' ORDER BY name").fetchall()]
    return [t for t in PARENTS if t in names] + [t for t in names if t not in PARENTS]


def _columns(src: sqlite_utils.Database, table: str) -> list[str]:
    return [r[1] for r in src.execute(f'PRAGMA table_info("{table}")').fetchall()]


def drift(db: Any) -> list[str]:
    """One line per account or budget whose balance or hold differs from the sum of its ledger rows (either
    database: portable SQL)."""
    problems: list[str] = []
    for table, cols, ledger, key, deltas in SUMS:
        sums = ", ".join(f"COALESCE(SUM(l.{d}), 0)" for d in deltas)
        rows = db.execute(f"SELECT t.{key}, {', '.join(f't.{c}' for c in cols)}, {sums} FROM {table} t"
                          f" LEFT JOIN {ledger} l ON l.{key} = t.{key} GROUP BY t.{key} ORDER BY t.{key}").fetchall()
        for row in rows:
            values, totals = row[1:1 + len(cols)], row[1 + len(cols):]
            for col, value, total in zip(cols, values, totals, strict=True):
                if value != total:
                    problems.append(f"{table} {row[0]}: {col} {value} but its {ledger} rows sum to {total}")
    return problems


def _counted(db: Any) -> int:
    return sum(int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]) * len(cols)
               for table, cols, *_ in SUMS)


def _not_empty(dst: PgDatabase) -> dict[str, int]:
    tables = [r[0] for r in dst.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                                        " AND tablename <> '_migrations' ORDER BY tablename").fetchall()]
    found = {}
    for table in tables:
        count = int(dst.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0])
        if count:
            found[table] = count
    return found


def copy_sqlite_to_postgres(source: Path, target: DatabaseUrl) -> CopyReport:
    """Copy the SQLite database at ``source`` into the empty PostgreSQL database at ``target`` (see the module
    docstring). ``CopyRefused`` if the target holds data or a check fails; ``ConfigError`` if it cannot be
    reached."""
    if not source.exists():
        raise CopyRefused(f"{source} does not exist: name the SQLite file with --from (or IMAGINE_DB_PATH)")
    src = open_db(source)
    try:
        dst = open_postgres(target)
        try:
            return _copy(src, dst, source)
        finally:
            dst.close()
    finally:
        src.close()


def _copy(src: sqlite_utils.Database, dst: PgDatabase, source: Path) -> CopyReport:
    report = CopyReport(source, dst.url.redacted)
    with transaction(dst):  # all or nothing, under the write lock: no bot writes meanwhile
        busy = _not_empty(dst)
        if busy:
            raise CopyRefused(f"{dst.url.redacted} is not empty ("
                              + ", ".join(f"{t}: {n:,} rows" for t, n in busy.items())
                              + "): copy into a new, empty database")
        for table in _tables(src):
            columns = _columns(src, table)
            cursor = src.execute(f'SELECT {", ".join(f"{chr(34)}{c}{chr(34)}" for c in columns)} FROM "{table}"'
                                 " ORDER BY rowid")
            copied = 0
            while rows := cursor.fetchmany(BATCH):
                dst.copy_rows(table, columns, rows)
                copied += len(rows)
            report.rows[table] = copied
        for table, column in dst.execute(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
                " AND is_identity = 'YES'").fetchall():
            dst.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"
                        f" (SELECT COALESCE(MAX({column}), 0) + 1 FROM {table}), false)")
        wrong = [f"{table}: {n:,} rows in the file, {m:,} copied"
                 for table, n in report.rows.items()
                 if n != (m := int(dst.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]))]
        wrong += [f"{table}: {int(src.execute(f'SELECT COUNT(*) FROM {table}').fetchone()[0]):,} rows in the file,"
                  f" {n:,} read" for table, n in report.rows.items()
                  if n != int(src.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0])]
        problems = drift(dst)
        if wrong or problems:
            already = drift(src)
            why = "; ".join(wrong + problems[:10]) + (f" (and {len(problems) - 10} more)" if len(problems) > 10
                                                      else "")
            if already:
                why += (". The SQLite file has the same drift already (`imagine-bot credits verify`): fix it there"
                        " first")
            raise CopyRefused(f"the copy did not check out, nothing was kept: {why}")
        report.balances_checked = _counted(dst)
    log.info("copied %s to %s: %s", source, dst.url.redacted, report.rows)
    return report
