"""Exceptions that cross module boundaries, each naming what an operator must fix."""

from __future__ import annotations


class MtaError(Exception):
    """Base class for our own errors."""


class ConfigError(MtaError):
    """A configuration problem; the message names the file, key path and what was expected."""


class StorageError(MtaError):
    """The database could not do what was asked; nothing was committed.

    ``full`` is set when the disk or the database size limit is exhausted (SMTP 452 4.3.1);
    otherwise the failure is temporary (SMTP 451 4.3.0). ``fatal`` marks the few failures a
    running daemon cannot outlive — the database file corrupt, gone or replaced — and ends it;
    every other one is logged, counted and retried.
    """

    def __init__(self, message: str, *, full: bool = False, fatal: bool = False) -> None:
        super().__init__(message)
        self.full = full
        self.fatal = fatal
