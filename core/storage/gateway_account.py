"""The operator's gateway account as every process sees it (``gateway_account``, one row) and the balance
readings over time (``gateway_balance_log``): ``core.gateway.balance`` decides, this keeps."""

from __future__ import annotations

from datetime import datetime

from imagine_bot.core.gateway.balance import AccountState
from imagine_bot.core.storage.db import Database, iso, transaction


class SqliteGatewayAccount:
    def __init__(self, db: Database) -> None:
        self.db = db

    def read(self) -> AccountState:
        """The account as last recorded by a running bot (nothing yet: all None)."""
        row = self.db.execute("SELECT balance, checked_at, paused, paused_since, detail FROM gateway_account"
                              " WHERE id = 1").fetchone()
        if row is None:
            return AccountState(None, None, None, None, None)
        return AccountState(row[0], datetime.fromisoformat(row[1]) if row[1] else None, row[2],
                            datetime.fromisoformat(row[3]) if row[3] else None, row[4])

    def _change(self, set_sql: str, values: list[object], when: str = "1 = 1") -> bool:
        """Compare-and-set on the one row: True only for the one process that made the change."""
        with transaction(self.db):
            self.db.execute("INSERT INTO gateway_account (id) VALUES (1) ON CONFLICT (id) DO NOTHING")
            cursor = self.db.execute(f"UPDATE gateway_account SET {set_sql} WHERE id = 1 AND {when}", values)
            return bool(cursor.rowcount == 1)

    def record_balance(self, balance: int, now: datetime, *, forget_before: datetime) -> None:
        """Note a balance reading (the row and the log), dropping readings older than ``forget_before``."""
        with transaction(self.db):
            self._change("balance = ?, checked_at = ?", [balance, iso(now)])
            self.db.execute("INSERT INTO gateway_balance_log (ts, balance) VALUES (?, ?)", [iso(now), balance])
            self.db.execute("DELETE FROM gateway_balance_log WHERE ts < ?", [iso(forget_before)])

    def pause(self, cause: str, since: datetime, detail: str) -> bool:
        """Pause new jobs; True for the one process that paused them (False: already paused)."""
        return self._change("paused = ?, paused_since = ?, detail = ?", [cause, iso(since), detail],
                            "paused IS NULL")

    def resume(self) -> bool:
        """Resume new jobs; True for the one process that resumed them (False: not paused)."""
        return self._change("paused = NULL, paused_since = NULL, detail = NULL", [], "paused IS NOT NULL")

    def mark_undelivered_told(self, day: str) -> bool:
        """True for the one process that tells the operators about ``day``'s undelivered credits."""
        return self._change("undelivered_told_day = ?", [day, day],
                            "(undelivered_told_day IS NULL OR undelivered_told_day <> ?)")
