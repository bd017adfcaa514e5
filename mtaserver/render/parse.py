"""Handlebars source → node tree, with the compile-time limits (size, nesting depth).

Handles ``{{x}}``, ``{{{x}}}``/``{{& x}}``, blocks with ``{{else}}``/``{{else if …}}``/
``{{^}}``, inverted sections ``{{^x}}``, comments, ``\\{{`` escapes, ``~`` whitespace
control, Handlebars' standalone-line rule, sub-expressions, hash arguments, string /
number / boolean literals, paths (``a.b``, ``a/b``, ``this``, ``../``, ``@root``,
``@index``, ``[odd key]``) and ``as |item i|`` block params. Partials and decorators are
refused: templates cannot include other templates, so they cannot recurse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from mtaserver.render import helpers
from mtaserver.render.errors import TemplateError
from mtaserver.render.nodes import Block, Call, Expr, Literal, Name, Node, Output, Path, Text

_OPEN: Final = re.compile(r"\\?\{\{")
_WORD: Final = r"[^\s!\"#%-,\.\/;->@\[-\^`\{-~]+"
_EXPR_TOKEN: Final = re.compile(
    r"""\s*(?:
      (?P<open>\()|(?P<close>\))
    | "(?P<dq>(?:[^"\\]|\\.)*)"|'(?P<sq>(?:[^'\\]|\\.)*)'
    | (?P<num>-?\d+(?:\.\d+)?)(?=[\s)}]|$)
    | as\s+\|(?P<bp>[^|]*)\|
    | (?P<key>"""
    + _WORD
    + r""")=
    | (?P<path>(?:@|\.\./|\./|\.(?=[\s)]|$))*(?:"""
    + _WORD
    + r"""|\[[^\]]*\]|\.)(?:[./](?:"""
    + _WORD
    + r"""|\[[^\]]*\]))*)
    )""",
    re.VERBOSE,
)
_STANDALONE_KINDS: Final = frozenset({"open", "inverse", "else", "close", "comment"})


@dataclass(slots=True)
class Tag:
    kind: str  # text, output, raw, open, inverse, else, close, comment
    body: str
    line: int
    strip_left: bool = False
    strip_right: bool = False


def _find_close(src: str, start: int, closer: str, line: int) -> int:
    """Index of ``closer`` after ``start``, skipping quoted strings."""
    i, n = start, len(src)
    while i < n:
        c = src[i]
        if c in "\"'":
            end = src.find(c, i + 1)
            if end < 0:
                break
            i = end + 1
            continue
        if src.startswith(closer, i):
            return i
        i += 1
    raise TemplateError(f"unclosed '{{{{' on line {line}")


def tokenize(src: str) -> list[Tag]:
    tags: list[Tag] = []
    pos, line = 0, 1
    text: list[str] = []

    def flush() -> None:
        if text:
            tags.append(Tag("text", "".join(text), line))
            text.clear()

    while True:
        m = _OPEN.search(src, pos)
        if m is None:
            text.append(src[pos:])
            break
        text.append(src[pos : m.start()])
        line += src.count("\n", pos, m.start())
        if m.group(0).startswith("\\"):
            text.append("{{")
            pos = m.end()
            continue
        flush()
        i = m.end()
        strip_left = src.startswith("~", i)
        i += strip_left
        if src.startswith("!--", i):
            end = src.find("--", i + 3)
            while end >= 0 and not re.match(r"--~?\}\}", src[end:]):
                end = src.find("--", end + 1)
            if end < 0:
                raise TemplateError(f"unclosed comment on line {line}")
            stop = src.index("}}", end) + 2
            tag = Tag("comment", "", line, strip_left, src[stop - 3] == "~")
        elif src.startswith("!", i):
            stop = src.index("}}", i) + 2 if "}}" in src[i:] else -1
            if stop < 0:
                raise TemplateError(f"unclosed comment on line {line}")
            tag = Tag("comment", "", line, strip_left, src[stop - 3] == "~")
        elif src.startswith("{", i):
            end = _find_close(src, i + 1, "}", line)
            body = src[i + 1 : end]
            right = src.startswith("~}}", end + 1)
            if not (right or src.startswith("}}", end + 1)):
                raise TemplateError(f"'{{{{{{' not closed by '}}}}}}' on line {line}")
            stop = end + 1 + (3 if right else 2)
            tag = Tag("raw", body.strip(), line, strip_left, right)
        else:
            end = _find_close(src, i, "}}", line)
            body = src[i:end]
            right = body.endswith("~")
            body = body[:-1] if right else body
            stop = end + 2
            tag = _classify(body.strip(), line, strip_left, right)
        line += src.count("\n", m.start(), stop)
        tags.append(tag)
        pos = stop
    flush()
    _whitespace_control(tags)
    return [t for t in tags if t.kind != "text" or t.body]


def _classify(body: str, line: int, left: bool, right: bool) -> Tag:
    if not body:
        raise TemplateError(f"empty '{{{{}}}}' on line {line}")
    sigil = body[0]
    if sigil in ">*" or body.startswith(("#>", "#*", "{")):
        raise TemplateError(f"partials and decorators are not supported (line {line})")
    if sigil == "#":
        return Tag("open", body[1:].strip(), line, left, right)
    if sigil == "/":
        return Tag("close", body[1:].strip(), line, left, right)
    if sigil == "^":
        rest = body[1:].strip()
        return Tag("inverse" if rest else "else", rest, line, left, right)
    if sigil == "&":
        return Tag("raw", body[1:].strip(), line, left, right)
    if body == "else" or body.startswith(("else ", "else\t", "else\n")):
        return Tag("else", body[4:].strip(), line, left, right)
    return Tag("output", body, line, left, right)


def _whitespace_control(tags: list[Tag]) -> None:
    """``~`` strips all whitespace next to a tag; a block tag alone on a line drops the line."""
    for i, tag in enumerate(tags):
        if tag.kind == "text":
            continue
        if tag.strip_left and i > 0 and tags[i - 1].kind == "text":
            tags[i - 1].body = tags[i - 1].body.rstrip()
        if tag.strip_right and i + 1 < len(tags) and tags[i + 1].kind == "text":
            tags[i + 1].body = tags[i + 1].body.lstrip()
    for i, tag in enumerate(tags):
        if tag.kind not in _STANDALONE_KINDS:
            continue
        prev = tags[i - 1] if i > 0 else None
        nxt = tags[i + 1] if i + 1 < len(tags) else None
        if prev is not None and prev.kind != "text":
            continue
        if nxt is not None and nxt.kind != "text":
            continue
        before = prev.body if prev is not None else ""
        head, nl, tail = before.rpartition("\n")
        if tail.strip(" \t") or (not nl and i > 1):
            continue
        after = nxt.body if nxt is not None else ""
        first, nl2, rest = after.partition("\n")
        if first.strip(" \t\r") or (not nl2 and i + 2 < len(tags)):
            continue
        if prev is not None:
            prev.body = head + nl
        if nxt is not None:
            nxt.body = rest if nl2 else ""


# -- expressions --------------------------------------------------------------------------
@dataclass(slots=True)
class Parsed:
    head: str  # the first token as written (helper name or path)
    params: list[Expr]
    hash: list[tuple[str, Expr]]
    block_params: tuple[str, ...]
    first: Expr | None  # the first token as an expression, when it is one


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


def _path(text: str, line: int) -> Expr:
    is_data = text.startswith("@")
    text = text[1:] if is_data else text
    depth = 0
    while text.startswith(("../", "./")):
        depth += text.startswith("../")
        text = text[3:] if text.startswith("../") else text[2:]
    raw = re.findall(r"\[[^\]]*\]|[^./]+", text)
    parts = [p[1:-1] if p.startswith("[") else p for p in raw]
    explicit = False
    if parts and raw[0] in ("this", "."):
        parts, explicit = parts[1:], True
    elif text in (".", ""):
        explicit = True
    if is_data:
        if not parts:
            raise TemplateError(f"invalid data reference on line {line}")
        if parts[0] == "root":
            return Path("root", 0, tuple(parts[1:]))
        return Path(parts[0], depth, tuple(parts[1:]))
    if depth == 0 and not explicit and parts:
        return Name(parts[0], tuple(parts[1:]))
    return Path(None, depth, tuple(parts))


def parse_expression(body: str, line: int, depth: int, max_depth: int) -> Parsed:
    pos = 0
    items: list[tuple[str, object]] = []
    stack: list[list[tuple[str, object]]] = []
    block_params: tuple[str, ...] = ()
    while pos < len(body):
        if body[pos:].strip() == "":
            break
        m = _EXPR_TOKEN.match(body, pos)
        if m is None or m.end() == pos:
            raise TemplateError(f"cannot parse {body[pos:].strip()[:40]!r} on line {line}")
        pos = m.end()
        if m.group("open"):
            if depth + len(stack) + 1 > max_depth:
                raise TemplateError(f"sub-expressions nested too deeply on line {line}")
            stack.append(items)
            items = []
        elif m.group("close"):
            if not stack or not items:
                raise TemplateError(f"unbalanced ')' on line {line}")
            sub = _build(items, line)
            items = stack.pop()
            items.append(("expr", sub))
        elif m.group("bp") is not None:
            block_params = tuple(m.group("bp").split())
        elif m.group("key"):
            items.append(("key", m.group("key")))
        elif m.group("dq") is not None or m.group("sq") is not None:
            items.append(("expr", Literal(_unescape(m.group("dq") or m.group("sq") or ""))))
        elif m.group("num"):
            num = m.group("num")
            items.append(("expr", Literal(float(num) if "." in num else int(num))))
        else:
            items.append(("path", m.group("path")))
    if stack:
        raise TemplateError(f"unclosed '(' on line {line}")
    if not items:
        raise TemplateError(f"empty expression on line {line}")
    head_kind, head = items[0]
    params, hash_ = _arguments(items[1:], line)
    first = _atom(head_kind, head, line) if head_kind != "key" else None
    return Parsed(head if isinstance(head, str) else "", params, hash_, block_params, first)


_LITERALS: Final[dict[str, object]] = {"true": True, "false": False, "null": None}


def _atom(kind: str, value: object, line: int) -> Expr:
    if kind == "expr":
        assert isinstance(value, Expr)
        return value
    assert isinstance(value, str)
    if value in _LITERALS:
        return Literal(_LITERALS[value])
    if value == "undefined":
        return Literal(None)
    return _path(value, line)


def _arguments(
    items: list[tuple[str, object]], line: int
) -> tuple[list[Expr], list[tuple[str, Expr]]]:
    params: list[Expr] = []
    hash_: list[tuple[str, Expr]] = []
    i = 0
    while i < len(items):
        kind, value = items[i]
        if kind == "key":
            if i + 1 >= len(items) or items[i + 1][0] == "key":
                raise TemplateError(f"hash argument {value}= has no value on line {line}")
            hash_.append((str(value), _atom(*items[i + 1], line)))
            i += 2
            continue
        if hash_:
            raise TemplateError(f"positional argument after hash arguments on line {line}")
        params.append(_atom(kind, value, line))
        i += 1
    return params, hash_


def _build(items: list[tuple[str, object]], line: int) -> Expr:
    """A sub-expression ``(helper args…)``: its head must name a helper."""
    kind, head = items[0]
    if kind != "path" or (head not in helpers.INLINE and head not in helpers.PREDICATES):
        raise TemplateError(f"missing helper: {head!s} on line {line}")
    params, hash_ = _arguments(items[1:], line)
    return Call(str(head), tuple(params), tuple(hash_))


def helper_call(p: Parsed, line: int) -> Expr:
    """A ``{{…}}`` expression: a helper call, or a plain value when it has no arguments."""
    callable_ = p.head in helpers.INLINE or p.head in helpers.PREDICATES
    if callable_ and isinstance(p.first, Name) and not p.first.rest:
        return Call(p.head, tuple(p.params), tuple(p.hash))
    if p.params or p.hash:
        raise TemplateError(f"missing helper: {p.head} on line {line}")
    assert p.first is not None
    return p.first


@dataclass(slots=True)
class _Open:
    """A block being read: where its nodes go and which tag closes it."""

    block: Block
    name: str
    line: int
    slot: str = "program"  # or "inverse"
    chained: bool = False  # opened by {{else if …}}: closed by its parent's tag
    body: list[Node] = field(default_factory=list)

    def commit(self) -> None:
        if self.slot == "program":
            self.block.program = tuple(self.body)
        else:
            self.block.inverse = tuple(self.body)


def parse(src: str, max_depth: int) -> tuple[Node, ...]:
    """The node tree of ``src``; raises ``TemplateError`` naming the line at fault."""
    root: list[Node] = []
    stack: list[_Open] = []
    for tag in tokenize(src):
        current = stack[-1].body if stack else root
        if tag.kind == "text":
            current.append(Text(tag.body))
        elif tag.kind in ("output", "raw"):
            p = parse_expression(tag.body, tag.line, len(stack), max_depth)
            current.append(Output(helper_call(p, tag.line), escape=tag.kind == "output"))
        elif tag.kind in ("open", "inverse"):
            block = _open_block(tag.body, tag.line, len(stack), max_depth)
            slot = "inverse" if tag.kind == "inverse" else "program"
            current.append(block)
            stack.append(_Open(block, _block_name(tag.body), tag.line, slot))
        elif tag.kind == "else":
            _else(stack, tag, max_depth)
        elif tag.kind == "close":
            _close(stack, tag)
    if stack:
        raise TemplateError(
            f"'{{{{#{stack[-1].name}}}}}' opened on line {stack[-1].line} is never closed"
        )
    return tuple(root)


def _block_name(body: str) -> str:
    words = body.split()
    return words[0] if words else ""


def _open_block(body: str, line: int, depth: int, max_depth: int) -> Block:
    if depth + 1 > max_depth:
        raise TemplateError(f"blocks nested deeper than {max_depth} on line {line}")
    p = parse_expression(body, line, depth, max_depth)
    if p.head in helpers.ALL and isinstance(p.first, Name) and not p.first.rest:
        if p.head in helpers.STRUCTURAL and len(p.params) != 1:
            raise TemplateError(f"#{p.head} needs exactly one argument on line {line}")
        return Block(p.head, None, tuple(p.params), tuple(p.hash), p.block_params)
    if p.params or p.hash:
        raise TemplateError(f"missing helper: {p.head} on line {line}")
    return Block("", p.first, (), (), p.block_params)


def _else(stack: list[_Open], tag: Tag, max_depth: int) -> None:
    if not stack:
        raise TemplateError(f"'{{{{else}}}}' outside a block on line {tag.line}")
    top = stack[-1]
    top.commit()
    top.slot = "program" if top.slot == "inverse" else "inverse"
    top.body = []
    if tag.body:  # {{else if x}}: a nested block in the inverse that shares the closing tag
        chained = _open_block(tag.body, tag.line, len(stack), max_depth)
        top.body.append(chained)
        stack.append(_Open(chained, top.name, tag.line, chained=True))


def _close(stack: list[_Open], tag: Tag) -> None:
    while True:
        if not stack:
            raise TemplateError(f"'{{{{/{tag.body}}}}}' closes no block on line {tag.line}")
        top = stack.pop()
        top.commit()
        if not top.chained:
            break
    if top.name != tag.body:
        raise TemplateError(
            f"'{{{{/{tag.body}}}}}' on line {tag.line} does not close '{top.name}'"
            f" (opened on line {top.line})"
        )
