"""Markdown/CSV table answers become real tables and CSV."""

from __future__ import annotations

import csv
import io

from vlassist.answers.tables import json_table, parse_csv_table, parse_markdown_tables, parse_table

CHART_ANSWER = """Here is the data:

| Month | Sales (k€) | Returns |
|:------|----------:|---|
| Jan | 12.5 | 3 |
| Feb | 14 | |
| Mar | 9.75 | 1 |

The trend is flat."""


def test_markdown_table_rows_and_columns():
    """Header, alignment row and body rows parse; empty cells stay empty."""
    (table,) = parse_markdown_tables(CHART_ANSWER)
    assert table.columns == ["Month", "Sales (k€)", "Returns"]
    assert table.rows == [["Jan", "12.5", "3"], ["Feb", "14", ""], ["Mar", "9.75", "1"]]


def test_csv_round_trip():
    """The CSV export reads back to the same cells."""
    table = parse_table(CHART_ANSWER)
    assert list(csv.reader(io.StringIO(table.to_csv()))) == [table.columns] + table.rows


def test_truncated_and_ragged_rows_are_padded():
    """A table cut mid-row, or with rows of uneven width, comes out rectangular."""
    (table,) = parse_markdown_tables("|a|b|c|\n|---|---|---|\n|1|2|3|\n|4|5")
    assert table.rows == [["1", "2", "3"], ["4", "5", ""]]


def test_escaped_pipe_in_cell():
    """An escaped pipe is part of the cell, not a separator."""
    (table,) = parse_markdown_tables("| expr | v |\n|---|---|\n| a \\| b | 1 |")
    assert table.rows == [["a | b", "1"]]


def test_duplicate_headers_are_numbered():
    """Repeated or empty header names become distinct column names."""
    (table,) = parse_markdown_tables("| x | x |  |\n|---|---|---|\n| 1 | 2 | 3 |")
    assert table.columns == ["x", "x (2)", "column 3"]


def test_csv_answer_in_fence():
    """A ```csv block parses as a table."""
    table = parse_csv_table("```csv\nname,value\nP1,3.2\nP2,4\n```")
    assert table.columns == ["name", "value"] and table.rows == [["P1", "3.2"], ["P2", "4"]]


def test_prose_is_not_a_table():
    """Plain text yields no table."""
    assert parse_table("The chart shows rising sales.") is None


def test_json_rows_become_table():
    """JSON in the table_rows shape or a list of objects becomes a table."""
    assert json_table({"columns": ["a", "b"], "rows": [[1, None]]}).rows == [["1", ""]]
    assert json_table([{"a": 1}, {"b": 2}]).columns == ["a", "b"]
