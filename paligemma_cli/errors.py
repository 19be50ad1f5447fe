"""The one exception the CLI turns into a red line and a non-zero exit."""

from __future__ import annotations


class PgmError(Exception):
    """A problem the user can fix: `message` says what is wrong, `hint` how to fix it.

    Raised anywhere in the engine; caught only at the CLI edge, where it becomes one line
    (no traceback) and exit code 1. Never put a secret (token) in either field.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip() if self.hint else self.message
