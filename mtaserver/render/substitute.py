"""SendGrid's legacy ``substitutions`` (and ``sections``): literal key → value replacement.

All keys are replaced in one pass, longest key first where keys overlap, so a value that
happens to contain another key is left as written (as SendGrid does). The output is
measured while it is built: a short key replaced by a long value many times is refused
before the result is allocated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from mtaserver.render.errors import BudgetExceeded

DEFAULT_MAX_OUTPUT = 4_194_304


def substitute(
    text: str,
    substitutions: Mapping[str, str],
    sections: Mapping[str, str] | None = None,
    max_output: int = DEFAULT_MAX_OUTPUT,
) -> str:
    """``text`` with each substitution key replaced by its value.

    A value may name a section key; it is replaced by the section's text (one level, as
    SendGrid). Raises ``BudgetExceeded`` (a ``TemplateError``) when the result would
    exceed ``max_output``.
    """
    table = {k: v for k, v in substitutions.items() if k}
    if sections:
        inner = {k: v for k, v in sections.items() if k}
        table = {k: _replace(v, inner, max_output) for k, v in table.items()}
    return _replace(text, table, max_output)


def _replace(text: str, table: Mapping[str, str], max_output: int) -> str:
    if not table or not text:
        return text
    present = [k for k in table if k in text]
    if not present:
        return text
    present.sort(key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(k) for k in present))
    pieces: list[str] = []
    size = 0
    pos = 0
    for m in pattern.finditer(text):
        value = table[m.group(0)]
        size += (m.start() - pos) + len(value)
        if size > max_output:
            raise BudgetExceeded("substitutions exceed the output size limit")
        pieces.append(text[pos : m.start()])
        pieces.append(value)
        pos = m.end()
    size += len(text) - pos
    if size > max_output:
        raise BudgetExceeded("substitutions exceed the output size limit")
    pieces.append(text[pos:])
    return "".join(pieces)
