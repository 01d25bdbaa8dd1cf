"""The case queue a flow declares for support: which of its states wait for a decision.

A flow that hands cases to people lists them through its `support_queue` hook, a
`SupportQueue`: the states a case waits in (for support, or for the person
support asked), which of them mean "overdue", which mean "waiting for the
person", and a function giving each case's signals (a few words per row, such as
whether the details given match the account). The console's queue page reads
only this, so a new flow's cases show there without the console knowing the flow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine import AttemptRecord

# The signals of one case: a name per signal, a short stored word per value.
Signals = Callable[[Any, AttemptRecord], Mapping[str, str]]


def no_signals(app: Any, record: AttemptRecord) -> Mapping[str, str]:
    """A queue whose rows carry no signals."""
    return {}


@dataclass(frozen=True)
class SupportQueue:
    """A flow's queue: the states listed, the overdue ones, the ones waiting on the person."""

    states: tuple[str, ...]
    overdue: tuple[str, ...] = ()
    waiting_on_person: tuple[str, ...] = ()
    signals: Signals = field(default=no_signals)

    def __post_init__(self) -> None:
        extra = set(self.overdue) | set(self.waiting_on_person)
        if not extra <= set(self.states):
            raise ValueError(f"queue states {sorted(extra - set(self.states))} are not listed")
