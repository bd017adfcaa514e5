"""The one exception the template engine raises, so callers can answer a clean 400."""

from __future__ import annotations


class TemplateError(Exception):
    """A template that cannot be compiled, or a render that broke a limit.

    ``message`` is safe to show to the API caller: it names the problem and, where known,
    the line of the template, never Python internals.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BudgetExceeded(TemplateError):
    """A render stopped by its budget (steps, time or output size), not by a fault in the
    template: the caller may retry the same render with a larger budget."""
