"""Compile once, render many: ``Template``, its limits, and the caller-owned cache.

``compile_template`` refuses a template over ``CompileLimits`` (size, block and
sub-expression nesting) before any work is done; ``Template.render`` runs under a
``RenderBudget`` (output size, steps, optionally wall time through an injected monotonic
clock). Either failure is a ``TemplateError`` whose message can go back to the API caller.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from mtaserver.render.errors import TemplateError
from mtaserver.render.nodes import Frame, Node, State, render_all
from mtaserver.render.parse import parse


@dataclass(frozen=True, slots=True)
class CompileLimits:
    max_size: int = 1_048_576  # characters of template source
    max_depth: int = 24  # nested blocks plus nested sub-expressions


@dataclass(frozen=True, slots=True)
class RenderBudget:
    max_output: int = 4_194_304  # characters of output per render
    max_steps: int = 200_000  # node visits plus loop iterations per render
    max_seconds: float | None = None  # needs ``monotonic``
    monotonic: Callable[[], float] | None = None


DEFAULT_LIMITS = CompileLimits()
DEFAULT_BUDGET = RenderBudget()


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled template; immutable, safe to share between renders and threads."""

    source: str
    nodes: tuple[Node, ...]

    def render(self, data: object, budget: RenderBudget = DEFAULT_BUDGET) -> str:
        """Render with ``data`` (decoded JSON: dicts, lists, str, numbers, bools, None)."""
        state = State(
            data, budget.max_steps, budget.max_output, budget.monotonic, budget.max_seconds
        )
        out: list[str] = []
        try:
            render_all(self.nodes, state, Frame(data, None, None, None), out)
        except RecursionError:
            raise TemplateError("template data nested too deeply") from None
        return "".join(out)


def compile_template(source: str, limits: CompileLimits = DEFAULT_LIMITS) -> Template:
    if not isinstance(source, str):
        raise TemplateError("a template must be a string")
    if len(source) > limits.max_size:
        raise TemplateError(
            f"template is {len(source)} characters, more than the {limits.max_size} allowed"
        )
    try:
        return Template(source, parse(source, limits.max_depth))
    except RecursionError:
        raise TemplateError("template nested too deeply") from None


class TemplateCache:
    """Compiled templates by source text, least recently used first out.

    Owned by whoever renders (one per API service); failures are cached too, so a bad
    template sent a thousand times is parsed once.
    """

    def __init__(self, max_entries: int = 256, limits: CompileLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Template | TemplateError] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, source: str) -> Template:
        """The compiled template for ``source``; raises ``TemplateError`` if it is invalid."""
        found = self._entries.get(source)
        if found is None:
            self.misses += 1
            try:
                found = compile_template(source, self.limits)
            except TemplateError as exc:
                found = exc
            self._entries[source] = found
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            self.hits += 1
            self._entries.move_to_end(source)
        if isinstance(found, TemplateError):
            raise TemplateError(found.message)
        return found

    def render(self, source: str, data: object, budget: RenderBudget = DEFAULT_BUDGET) -> str:
        return self.get(source).render(data, budget)

    def __len__(self) -> int:
        return len(self._entries)
