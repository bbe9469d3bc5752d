"""Text tables for a terminal: every table the CLI prints pads and cuts by display width.

``len()`` counts code points, a terminal counts columns: a CJK character or an emoji takes two
columns, a combining accent none. One width function, used by every table, keeps the columns
of `mlferry status`, `mlferry history` and `mlferry runs` straight whatever the model names.
Cells longer than their column's maximum are cut with an ellipsis; --json keeps them whole.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import Sequence

ELLIPSIS = "…"
CELL_MAX = 64  # display columns a cell may take before it is cut (model names: `status` showed 64)


@lru_cache(maxsize=4096)
def char_width(char: str) -> int:
    """Columns a terminal gives one code point: 2 for East Asian wide and fullwidth, 0 for
    combining marks and invisible format characters (zero-width joiner, variation selectors)."""
    if unicodedata.category(char) in ("Mn", "Me", "Cf") or unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def width(text: str) -> int:
    """The display width of text on a terminal."""
    if text.isascii():
        return len(text)
    return sum(char_width(c) for c in text)


def fit(text: str, limit: int, *, middle: bool = False) -> str:
    """text cut to at most `limit` display columns, an ellipsis marking the cut: at the end, or in
    the middle so that the end (a step's name, a retry's count and wait) stays."""
    if width(text) <= limit:
        return text
    budget = limit - 1  # one column for the ellipsis
    tail_budget = budget // 3 if middle else 0
    head = _columns(text, budget - tail_budget)
    tail = _columns(text[::-1], tail_budget)[::-1]
    return head + ELLIPSIS + tail


def _columns(text: str, budget: int) -> str:
    """The longest start of text that fits in `budget` display columns."""
    out = []
    for char in text:
        budget -= char_width(char)
        if budget < 0:
            break
        out.append(char)
    return "".join(out)


def printable(text: str, limit: int = 48) -> str:
    """text with control characters shown as "?", cut to `limit` display columns: safe for one line."""
    return fit("".join(c if c.isprintable() else "?" for c in text), limit)


def pad(text: str, columns: int, *, right: bool = False) -> str:
    """text padded with spaces to `columns` display columns (left-aligned unless right)."""
    fill = " " * max(0, columns - width(text))
    return fill + text if right else text + fill


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], cell_max: int = CELL_MAX) -> str:
    """Columns two spaces apart, each as wide as its widest cell, cells cut at cell_max columns."""
    lines = [[fit(str(cell), cell_max) for cell in line] for line in [header, *rows]]
    widths = [max(width(cell) for cell in column) for column in zip(*lines)]
    text = ["  ".join(pad(cell, w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    return "\n".join(text) + "\n"
