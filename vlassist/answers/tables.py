"""Markdown and CSV tables in model answers → rows and columns, and back out as CSV."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

_SEPARATOR_CELL = re.compile(r"^:?-{2,}:?$")


@dataclass(frozen=True)
class Table:
    """A parsed table: column names and rows of cell text, every row as wide as the header."""

    columns: list[str]
    rows: list[list[str]]

    def to_csv(self) -> str:
        """The table as CSV text (header first)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(self.rows)
        return buf.getvalue()


def _split_row(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    cells = re.split(r"(?<!\\)\|", line)
    return [c.strip().replace("\\|", "|") for c in cells]


def _rectangular(columns: list[str], rows: list[list[str]]) -> Table:
    width = max([len(columns)] + [len(r) for r in rows])
    columns = columns + [""] * (width - len(columns))
    # Duplicate or empty headers would collide as dataframe columns; number them.
    seen: dict[str, int] = {}
    named = []
    for i, name in enumerate(columns):
        name = name or f"column {i + 1}"
        seen[name] = seen.get(name, 0) + 1
        named.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return Table(named, [r + [""] * (width - len(r)) for r in rows])


def parse_markdown_tables(text: str) -> list[Table]:
    """Every pipe table in a Markdown answer (header, separator line, rows); cut tables keep whole rows."""
    tables, lines, i = [], text.splitlines(), 0
    while i < len(lines) - 1:
        header, separator = lines[i], lines[i + 1]
        sep_cells = _split_row(separator) if "|" in separator or "-" in separator else []
        if "|" in header and sep_cells and all(_SEPARATOR_CELL.match(c.replace(" ", "")) for c in sep_cells):
            columns, rows, i = _split_row(header), [], i + 2
            while i < len(lines) and "|" in lines[i]:
                rows.append(_split_row(lines[i]))
                i += 1
            tables.append(_rectangular(columns, rows))
        else:
            i += 1
    return tables


def parse_csv_table(text: str) -> Table | None:
    """A CSV (or TSV) table from an answer or its ```csv block; None when it is not tabular."""
    fence = re.search(r"```(?:csv|tsv)?[^\n]*\n(.*?)(?:```|\Z)", text, re.S)
    body = (fence.group(1) if fence else text).strip()
    lines = [line for line in body.splitlines() if line.strip()]
    if len(lines) < 2:
        return None
    try:
        dialect = csv.Sniffer().sniff("\n".join(lines[:10]), delimiters=",;\t")
    except csv.Error:
        return None
    rows = list(csv.reader(lines, dialect))
    if len(rows[0]) < 2:
        return None
    return _rectangular([c.strip() for c in rows[0]], [[c.strip() for c in r] for r in rows[1:]])


def parse_table(text: str) -> Table | None:
    """The largest Markdown table in an answer, else a CSV table, else None."""
    tables = parse_markdown_tables(text)
    if tables:
        return max(tables, key=lambda t: len(t.rows) * len(t.columns))
    return parse_csv_table(text)


def json_table(value) -> Table | None:
    """A table from JSON shaped like the table_rows template or a list of flat objects."""
    if isinstance(value, dict) and isinstance(value.get("columns"), list) and isinstance(value.get("rows"), list):
        rows = [[_cell(c) for c in r] if isinstance(r, list) else [_cell(r)] for r in value["rows"]]
        return _rectangular([str(c) for c in value["columns"]], rows)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        columns = list(dict.fromkeys(k for v in value for k in v))
        return _rectangular(columns, [[_cell(v.get(k)) for k in columns] for v in value])
    return None


def _cell(value) -> str:
    return "" if value is None else str(value)
