"""Plain-text tables for command-line and benchmark reports."""

from __future__ import annotations

import pandas as pd


def markdown_table(frame: pd.DataFrame | list[dict], *, index: bool = True, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table (floats rounded to ``digits``)."""
    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(frame)
        index = False
    if index:
        frame = frame.reset_index()
    header = [str(c) for c in frame.columns]

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)
