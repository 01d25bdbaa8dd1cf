"""Fixtures for the engine's tests: an `Engine` running the test-only ticket flow."""

from __future__ import annotations

import pytest

from engine import Database, Engine
from tests.engine import ticket


@pytest.fixture
def engine(database: Database) -> Engine:
    """The engine with the ticket flow and the system clock (which freezegun moves)."""
    return Engine(database, [ticket.spec()])
