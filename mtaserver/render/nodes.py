"""The compiled form of a template — a tree of nodes — and the budgeted interpreter.

A template is compiled once into these objects and rendered many times. There is no code
generation: rendering walks the tree, so a template can do nothing but what the node types
do. Every node visit and every loop iteration spends one step from the render's budget and
every piece of output is counted against the output cap, so a render stops with
``TemplateError`` instead of looping or expanding without end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from mtaserver.render import helpers
from mtaserver.render.errors import BudgetExceeded
from mtaserver.render.values import MISSING, child, escape_html, to_text, truthy

# How many steps run between two looks at the clock (when a time budget is set).
CHECK_EVERY = 1024


class State:
    """The budget of one render; created per call, never shared."""

    __slots__ = ("deadline", "monotonic", "room", "root", "steps", "steps_left")

    def __init__(
        self,
        root: object,
        max_steps: int,
        max_output: int,
        monotonic: Callable[[], float] | None,
        max_seconds: float | None,
    ) -> None:
        self.root = root
        self.room = max_output
        self.steps_left = max_steps
        self.steps = min(CHECK_EVERY, max_steps)
        self.steps_left -= self.steps
        self.monotonic = monotonic if max_seconds is not None else None
        self.deadline = (
            monotonic() + max_seconds if monotonic is not None and max_seconds is not None else 0.0
        )

    def refill(self) -> None:
        """Called when the current slice of steps is spent: check the totals and the clock."""
        if self.steps_left <= 0:
            raise BudgetExceeded("template render exceeded its step budget (loops too large)")
        if self.monotonic is not None and self.monotonic() > self.deadline:
            raise BudgetExceeded("template render exceeded its time budget")
        self.steps = min(CHECK_EVERY, self.steps_left)
        self.steps_left -= self.steps

    def overflow(self) -> None:
        raise BudgetExceeded("template render exceeded the output size limit")


class Frame:
    """One context level: the current value, ``../``, the ``@`` data and block params."""

    __slots__ = ("ctx", "data", "params", "parent")

    def __init__(
        self,
        ctx: object,
        parent: Frame | None,
        data: Mapping[str, object] | None,
        params: Mapping[str, object] | None,
    ) -> None:
        self.ctx = ctx
        self.parent = parent
        self.data = data
        self.params = params


# -- expressions --------------------------------------------------------------------------
class Expr:
    __slots__ = ()

    def eval(self, st: State, fr: Frame) -> object:
        raise NotImplementedError


class Literal(Expr):
    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def eval(self, st: State, fr: Frame) -> object:
        return self.value


class Name(Expr):
    """The common case: ``name`` or ``a.b.c`` looked up from the current context."""

    __slots__ = ("first", "rest")

    def __init__(self, first: str, rest: tuple[str, ...]) -> None:
        self.first = first
        self.rest = rest

    def eval(self, st: State, fr: Frame) -> object:
        params = fr.params
        if params is not None and self.first in params:
            value = params[self.first]
        else:
            ctx = fr.ctx
            t = type(ctx)
            if t is dict or t is MappingProxyType:
                value = ctx.get(self.first, MISSING)  # type: ignore[attr-defined]
            else:
                value = child(ctx, self.first)
        for part in self.rest:
            value = child(value, part)
        return value


class Path(Expr):
    """``this``, ``./x``, ``../x``, ``@root.x``, ``@index`` and the like."""

    __slots__ = ("data", "depth", "parts")

    def __init__(self, data: str | None, depth: int, parts: tuple[str, ...]) -> None:
        self.data = data
        self.depth = depth
        self.parts = parts

    def eval(self, st: State, fr: Frame) -> object:
        value: object
        frame: Frame | None = fr
        for _ in range(self.depth):
            frame = frame.parent if frame is not None else None
        if self.data == "root":
            value = st.root
        elif frame is None:
            return MISSING
        elif self.data is not None:
            value = frame.data.get(self.data, MISSING) if frame.data is not None else MISSING
        else:
            value = frame.ctx
        for part in self.parts:
            value = child(value, part)
        return value


class Call(Expr):
    """A helper used inline or as a sub-expression: ``(length items)``."""

    __slots__ = ("fn", "hash", "name", "params")

    def __init__(
        self, name: str, params: tuple[Expr, ...], hash_: tuple[tuple[str, Expr], ...]
    ) -> None:
        self.name = name
        self.params = params
        self.hash = hash_
        self.fn: Callable[[helpers.Args, helpers.Hash], object]
        if name in helpers.PREDICATES:
            self.fn = helpers.PREDICATES[name]
        else:
            self.fn = helpers.INLINE[name]

    def eval(self, st: State, fr: Frame) -> object:
        args = [p.eval(st, fr) for p in self.params]
        hash_ = {k: v.eval(st, fr) for k, v in self.hash}
        return self.fn(args, hash_)


# -- nodes --------------------------------------------------------------------------------
class Node:
    __slots__ = ()

    def render(self, st: State, fr: Frame, out: list[str]) -> None:
        raise NotImplementedError


def render_all(nodes: Sequence[Node], st: State, fr: Frame, out: list[str]) -> None:
    for node in nodes:
        node.render(st, fr, out)


class Text(Node):
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def render(self, st: State, fr: Frame, out: list[str]) -> None:
        st.room -= len(self.text)
        if st.room < 0:
            st.overflow()
        out.append(self.text)


class Output(Node):
    """``{{expr}}`` (escaped) or ``{{{expr}}}`` (raw)."""

    __slots__ = ("escape", "expr")

    def __init__(self, expr: Expr, escape: bool) -> None:
        self.expr = expr
        self.escape = escape

    def render(self, st: State, fr: Frame, out: list[str]) -> None:
        st.steps -= 1
        if st.steps < 0:
            st.refill()
        text = to_text(self.expr.eval(st, fr))
        if self.escape:
            text = escape_html(text)
        st.room -= len(text)
        if st.room < 0:
            st.overflow()
        out.append(text)


class Block(Node):
    """``{{#name params}}program{{else}}inverse{{/name}}``."""

    __slots__ = ("block_params", "hash", "inverse", "name", "params", "program", "target")

    def __init__(
        self,
        name: str,
        target: Expr | None,
        params: tuple[Expr, ...],
        hash_: tuple[tuple[str, Expr], ...],
        block_params: tuple[str, ...],
    ) -> None:
        self.name = name  # a helper name, or "" for a section on a value (``target``)
        self.target = target
        self.params = params
        self.hash = hash_
        self.block_params = block_params
        self.program: tuple[Node, ...] = ()
        self.inverse: tuple[Node, ...] = ()

    def render(self, st: State, fr: Frame, out: list[str]) -> None:
        st.steps -= 1
        if st.steps < 0:
            st.refill()
        name = self.name
        if name == "each":
            self._each(self.params[0].eval(st, fr), st, fr, out)
            return
        if name == "with":
            value = self.params[0].eval(st, fr)
            if truthy(value, include_zero=True):
                self._enter(value, fr, fr.data, (value,), st, out)
            else:
                render_all(self.inverse, st, fr, out)
            return
        predicate = helpers.PREDICATES.get(name)
        if predicate is not None:
            args = [p.eval(st, fr) for p in self.params]
            hash_ = {k: v.eval(st, fr) for k, v in self.hash}
            render_all(self.program if predicate(args, hash_) else self.inverse, st, fr, out)
            return
        value = self._value(st, fr)
        self._section(value, st, fr, out)

    def _value(self, st: State, fr: Frame) -> object:
        if self.target is not None:
            return self.target.eval(st, fr)
        args = [p.eval(st, fr) for p in self.params]
        hash_ = {k: v.eval(st, fr) for k, v in self.hash}
        return helpers.INLINE[self.name](args, hash_)

    def _section(self, value: object, st: State, fr: Frame, out: list[str]) -> None:
        """Mustache-style ``{{#value}}``: a list iterates, an object becomes the context."""
        t = type(value)
        if value is True:
            render_all(self.program, st, fr, out)
        elif not truthy(value):
            render_all(self.inverse, st, fr, out)
        elif t is list or t is tuple:
            self._each(value, st, fr, out)
        else:
            self._enter(value, fr, fr.data, (value,), st, out)

    def _enter(
        self,
        value: object,
        fr: Frame,
        data: Mapping[str, object] | None,
        values: tuple[object, ...],
        st: State,
        out: list[str],
    ) -> None:
        params = fr.params
        if self.block_params:
            params = dict(params or {})
            params.update(zip(self.block_params, values, strict=False))
        render_all(self.program, st, Frame(value, fr, data, params), out)

    def _each(self, value: object, st: State, fr: Frame, out: list[str]) -> None:
        t = type(value)
        items: Sequence[tuple[object, object]]
        if t is list or t is tuple:
            items = list(enumerate(value))  # type: ignore[arg-type]
        elif t is dict or t is MappingProxyType:
            items = list(value.items())  # type: ignore[attr-defined]
        else:
            items = ()
        if not items:
            render_all(self.inverse, st, fr, out)
            return
        last = len(items) - 1
        for i, (key, item) in enumerate(items):
            st.steps -= 1
            if st.steps < 0:
                st.refill()
            data = {
                "index": i,
                "key": key,
                "first": i == 0,
                "last": i == last,
                "root": st.root,
            }
            self._enter(item, fr, data, (item, key), st, out)
