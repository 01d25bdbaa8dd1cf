"""Fixtures for the engine's tests: an `Engine` on the per-backend test database."""

from __future__ import annotations

import pytest

import flows
from engine import Database, Engine


@pytest.fixture
def engine(database: Database) -> Engine:
    """The engine with the product's flows and the system clock (which freezegun moves)."""
    return Engine(database, flows.registry())
