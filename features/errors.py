"""Errors that carry what a user needs to fix bad input."""
from __future__ import annotations


class DataError(ValueError):
    """Bad input data. ``source`` names the file/table, ``fix`` says what to do."""

    def __init__(self, source: str, problem: str, fix: str = "") -> None:
        self.source, self.problem, self.fix = source, problem, fix
        text = f"{source}: {problem}"
        if fix:
            text += f" Fix: {fix}"
        super().__init__(text)
