"""The pieces every report section is written with: a figure with its caption, a table,
a number, a note. Text is escaped here; callers pass plain text unless a name says HTML.
"""

from __future__ import annotations

import html


def figure(uri: str | None, name: str, caption: str) -> str:
    """The figure ``uri`` (a PNG data URI) under its one-sentence caption; a note without one."""
    if uri is None:
        return note("No figure: no data for it in these logs.")
    return f'<p class="caption">{html.escape(caption)}</p><img alt="{name}" src="{uri}">'


def table(head: list[str], rows: list[list], left: int = 1) -> str:
    """A table whose first ``left`` columns are left-aligned (the rest are numbers)."""

    def cells(row: list, tag: str) -> str:
        return "".join(
            f"<{tag}{' class=left' if i < left else ''}>{html.escape(str(c))}</{tag}>"
            for i, c in enumerate(row)
        )

    return (
        f"<table><tr>{cells(head, 'th')}</tr>"
        + "".join(f"<tr>{cells(row, 'td')}</tr>" for row in rows)
        + "</table>"
    )


def number(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals; "-" for None."""
    return "-" if value is None else f"{value:.{digits}f}"


def note(text_html: str) -> str:
    """A small grey paragraph (``text_html`` is HTML: escape what comes from the logs)."""
    return f'<p class="note">{text_html}</p>'
