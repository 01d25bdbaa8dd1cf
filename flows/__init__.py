"""Flow definitions, one file each, and the registry the application uses."""

from __future__ import annotations

from datetime import timedelta

from engine import FlowRegistry
from flows import password_recovery


def registry(link_ttl_minutes: int = 60) -> FlowRegistry:
    """Every flow this product runs, configured."""
    return FlowRegistry([password_recovery.spec(link_ttl=timedelta(minutes=link_ttl_minutes))])
