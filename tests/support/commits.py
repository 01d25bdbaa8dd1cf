"""Counting the transactions a database commits: the cost of a batch, measured for real."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event

from engine import Database


class Commits:
    """How many transactions `db` has committed since this was made (or last reset)."""

    def __init__(self, db: Database) -> None:
        self.count = 0
        event.listen(db.engine, "commit", self._seen)

    def _seen(self, _conn: Any) -> None:
        self.count += 1
