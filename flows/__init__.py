"""The journeys this product runs: one file each, registered here.

A new journey is a new module in this package (its machine, effects,
deadlines, automatic work and hooks) and one line in `FLOWS`; the engine,
the worker, support, metrics, the command line and the diagrams take it up
from the registry.
"""

from __future__ import annotations

from api.settings import Settings
from engine import FlowRegistry
from flows import assisted_recovery, password_recovery

FLOWS = (password_recovery, assisted_recovery)


def registry(settings: Settings | None = None) -> FlowRegistry:
    """Every version of every flow, configured by `settings` (the defaults without:
    nothing is read from the environment)."""
    settings = settings or Settings.model_construct()
    return FlowRegistry(spec for flow in FLOWS for spec in flow.specs(settings))
