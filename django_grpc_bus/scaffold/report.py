"""What a run of generateservices hands back: each file's outcome, or the error that stops it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class ScaffoldError(Exception):
    """A file cannot be generated: unknown app, path outside BASE_DIR, bad hook or template.

    ``generateservices`` reports it as a ``CommandError`` with its text.
    """


@dataclass(frozen=True)
class Outcome:
    """What happened to one file; `relpath` is relative to BASE_DIR."""

    relpath: str
    action: str  # created, overwritten, appended, unchanged or skipped
    detail: str = ""


@dataclass
class Report:
    """Every file's outcome, plus hints (for stdout) and warnings (for stderr)."""

    outcomes: list[Outcome] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> Counter[str]:
        return Counter(outcome.action for outcome in self.outcomes)
