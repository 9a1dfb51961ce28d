"""A griffe extension for the API reference: reStructuredText habits in our docstrings, as Markdown.

The package's docstrings are read as Markdown by mkdocstrings, but a few use reStructuredText forms that
read well in ``help()``: simple tables (``=====  =====`` borders), literal blocks introduced by ``::`` and
``>>>`` sessions. This turns those into Markdown tables and fenced code blocks before rendering; every
other line is left as it is. Loaded from mkdocs.yml (``extensions: [docs/_ext/rst_docstrings.py]``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_BORDER = re.compile(r"^(\s*)(=+)( +=+)+\s*$")


def _columns(border: str) -> list[tuple[int, int]]:
    """(start, end) of each column, from a border line of ``=`` groups."""
    return [(m.start(), m.end()) for m in re.finditer(r"=+", border)]


def _split(line: str, cols: list[tuple[int, int]]) -> list[str]:
    cells = []
    for i, (start, _end) in enumerate(cols):
        stop = cols[i + 1][0] if i + 1 < len(cols) else None
        cells.append(line[start:stop].strip() if stop is not None else line[start:].strip())
    return cells


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(lines: list[str], cols: list[tuple[int, int]], indent: str) -> list[str]:
    """A simple table's body lines (header, border, rows, border) as a Markdown table."""
    borders = [i for i, line in enumerate(lines) if _BORDER.match(line)]
    header_rows = lines[: borders[0]] if borders else []
    body = lines[borders[0] + 1 : borders[1]] if len(borders) > 1 else lines
    header = _split(header_rows[0], cols) if header_rows else [""] * len(cols)
    rows: list[list[str]] = []
    for line in body:
        if not line.strip():
            continue
        cells = _split(line, cols)
        if rows and not cells[0]:  # continuation of the previous row
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    out = [indent + "| " + " | ".join(_cell(h) for h in header) + " |",
           indent + "|" + "|".join(" --- " for _ in cols) + "|"]
    out += [indent + "| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def convert(text: str) -> str:
    """The docstring ``text`` with simple tables, ``::`` blocks and ``>>>`` sessions in Markdown."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        border = _BORDER.match(line)
        if border:
            # header border, header, border, rows..., closing border
            j = i + 1
            seen = 1
            while j < len(lines) and seen < 3:
                if _BORDER.match(lines[j]):
                    seen += 1
                j += 1
            if seen == 3:
                if out and out[-1].strip():
                    out.append("")
                out += _table(lines[i + 1 : j], _columns(line), border.group(1))
                out.append("")
                i = j
                continue
        if line.rstrip().endswith("::") and not line.strip().startswith(("..", ">>>")):
            # a literal block follows: indented lines after a blank line
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            base = len(line) - len(line.lstrip())
            block: list[str] = []
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > base):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            if block:
                head = line.rstrip()
                if head.strip() != "::":  # "text::" reads "text:"; "text ::" and a bare "::" vanish
                    out.append(head[:-3] if head.endswith(" ::") else head[:-1])
                    out.append("")
                width = min(len(b) - len(b.lstrip()) for b in block if b.strip())
                language = "pycon" if block[0].strip().startswith(">>>") else "python"
                out.append(" " * base + f"```{language}")
                out += [" " * base + b[width:] if b.strip() else "" for b in block]
                out.append(" " * base + "```")
                out.append("")
                i = j
                continue
        if line.lstrip().startswith(">>>") and not (out and out[-1].lstrip().startswith("```")):
            base = len(line) - len(line.lstrip())
            j = i
            block = []
            while j < len(lines) and lines[j].strip() and len(lines[j]) - len(lines[j].lstrip()) >= base:
                block.append(lines[j][base:])
                j += 1
            if out and out[-1].strip():
                out.append("")
            out += [" " * base + "```pycon", *(" " * base + b for b in block), " " * base + "```"]
            i = j
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class RstDocstrings(griffe.Extension):
    """Rewrites each docstring once, when griffe first visits its object."""

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
