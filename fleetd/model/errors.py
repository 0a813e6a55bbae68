"""Errors raised by the unit-file model.

Both are ``ValueError``s: they describe bad input, never a bug or an I/O failure, so a
caller (API handler, fleetctl) can turn them into a 400 or a one-line message without
catching anything broader. ``UnitFileError`` keeps the file and line apart from the message
so an API can report them as fields while humans get the usual ``file:line: message``.
"""

from __future__ import annotations


class UnitFileError(ValueError):
    """A unit file (or its ``[X-Fleet]`` section) that cannot be accepted.

    The arguments are positional-or-keyword and all passed to ``ValueError`` so the
    exception survives pickling and ``repr`` shows every part.
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        super().__init__(message, file, line)
        self.message = message
        self.file = file
        self.line = line

    def __str__(self) -> str:
        """``file:line: message``, dropping the parts that are unknown."""
        if self.file is not None and self.line is not None:
            return f"{self.file}:{self.line}: {self.message}"
        if self.file is not None:
            return f"{self.file}: {self.message}"
        if self.line is not None:
            return f"line {self.line}: {self.message}"
        return self.message


class UnitNameError(ValueError):
    """A unit name that breaks one of the naming rules; the message names both."""

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message, name)
        self.message = message
        self.name = name

    def __str__(self) -> str:
        return self.message
