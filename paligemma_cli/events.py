"""How the engine reports progress without importing a UI: the CLI passes an `Events` subclass."""

from __future__ import annotations

from typing import Any


class Events:
    """No-op callbacks; the CLI's rich implementation overrides what it shows."""

    def message(self, text: str, level: str = "info") -> None:
        """A one-line note (level: info, warning)."""

    def phase_start(self, description: str, total: int | None = None) -> None:
        """A start-up phase begins (reading annotations, checking images, loading the model);
        `total` is its number of items when known."""

    def phase_advance(self, count: int) -> None:
        """`count` more items of the current phase are done."""

    def phase_end(self, summary: str) -> None:
        """The current phase finished; `summary` says what it found."""

    def train_start(self, total_steps: int, start_step: int, info: dict[str, Any]) -> None:
        """Training begins (or resumes at `start_step`)."""

    def train_step(self, step: int, metrics: dict[str, Any]) -> None:
        """An optimiser step finished; metrics has loss, lr, samples_per_s (on logging steps)."""

    def checkpoint_saved(self, path: str, step: int) -> None:
        """A checkpoint was written atomically."""

    def eval_start(self, total: int, description: str) -> None:
        """Generation over `total` examples begins."""

    def eval_advance(self, count: int) -> None:
        """`count` more examples were generated."""

    def eval_end(self, metrics: dict[str, Any]) -> None:
        """Generation and scoring finished."""

    def study_cell(self, done: int, total: int, label: str, score: float, seconds: float) -> None:
        """A study cell (one model on one task) finished: `done` of `total`, its 0-100 score, and
        the seconds it took (loading or merging the model included for its first task)."""
