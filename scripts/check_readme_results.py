#!/usr/bin/env python3
"""Check that the results tables in README.md are the ones `ttt-decode report` wrote.

    python scripts/check_readme_results.py [README.md]

A results region of the README is a line `<!-- results: PATH -->`, where PATH (relative to the
README's folder) names a report.md written by `ttt-decode report`, then the README text, then a line
`<!-- /results -->`. Each marker stands alone on its line. Every Markdown table inside a region
(consecutive lines starting with `|`) must be taken verbatim from one table of the named report:
its header and separator lines equal that table's, and its body rows are rows of that table, in the
report's order (rows may be left out, none changed or added). Lines are compared after whitespace
normalization: the cells of a line are stripped and joined with " | ", and a separator cell such as
`:---:` counts as `---`. A number copied wrong, a row from another table (e.g. another prompt
length's block with the same header) or a header the report does not have is a mismatch.

Exit status: 0 when every table matches (also when the README has no results region: nothing is
checked, and it says so); 1 with one line per mismatch (README line, the table, the report); 2 with
a one-line error when a marker names a file that does not exist, or a region is not closed or is
nested. Only the standard library is used.
"""

from __future__ import annotations

import os
import re
import sys

OPEN = re.compile(r"^\s*<!--\s*results:\s*(\S+)\s*-->\s*$")
CLOSE = re.compile(r"^\s*<!--\s*/results\s*-->\s*$")
SEPARATOR_CELL = re.compile(r"^:?-+:?$")


class CheckError(Exception):
    """A README the check cannot read: exit 2."""


def normalize(line: str) -> str:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    cells = ["---" if SEPARATOR_CELL.match(c) else " ".join(c.split()) for c in cells]
    return "| " + " | ".join(cells) + " |"


def tables(lines: list[str], first: int = 1) -> list[tuple[int, list[str]]]:
    """(line number of its header, its lines) of every table: runs of lines starting with '|'."""
    found, current, start = [], [], 0
    for n, line in enumerate(lines + [""], start=first):
        if line.lstrip().startswith("|"):
            if not current:
                start = n
            current.append(line)
        elif current:
            found.append((start, current))
            current = []
    return found


def regions(readme_lines: list[str], readme: str) -> list[tuple[int, str, list[str], int]]:
    """(marker line, named path, the lines inside, line number of the first of them) of every region."""
    found, open_at, path, body = [], None, None, []
    for n, line in enumerate(readme_lines, start=1):
        m = OPEN.match(line)
        if m:
            if open_at is not None:
                raise CheckError(f"{readme}:{n}: results region opened inside the one opened at line {open_at}")
            open_at, path, body = n, m.group(1), []
        elif CLOSE.match(line):
            if open_at is None:
                raise CheckError(f"{readme}:{n}: <!-- /results --> without an opening <!-- results: PATH -->")
            found.append((open_at, path, body, open_at + 1))
            open_at = None
        elif open_at is not None:
            body.append(line)
    if open_at is not None:
        raise CheckError(f"{readme}:{open_at}: results region for {path} is not closed with <!-- /results -->")
    return found


def _is_subsequence(rows: list[str], of: list[str]) -> bool:
    it = iter(of)
    return all(any(r == o for o in it) for r in rows)


def check_table(start: int, table: list[str], report_tables: list[list[str]]) -> list[tuple[int, str]]:
    """(README line, what is wrong) for one README table against the normalized tables of its report."""
    norm = [normalize(x) for x in table]
    head = norm[:2]
    same_head = [t for t in report_tables if t[:2] == head]
    if not same_head:
        return [(start, f"header {norm[0]!r} is not the header of any table")]
    body = norm[2:]
    if any(_is_subsequence(body, t[2:]) for t in same_head):
        return []
    # The report table with this header closest to the README's: its missing rows are the mismatches.
    best = max(same_head, key=lambda t: sum(r in t[2:] for r in body))
    bad = [(start + 2 + i, f"row {r!r} is not a row of that table") for i, r in enumerate(body) if r not in best[2:]]
    return bad or [(start, "rows are in another order than in the report")]


def check(readme: str, root: str | None = None) -> tuple[int, list[str]]:
    """(exit status, lines to print) for one README; the reports' paths are relative to root (default: the
    README's folder)."""
    try:
        with open(readme, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as e:
        return 2, [f"error: cannot read {readme}: {e.strerror or e}"]
    try:
        found = regions(lines, readme)
    except CheckError as e:
        return 2, [f"error: {e}"]
    if not found:
        return 0, [f"{readme}: no results regions (<!-- results: PATH --> ... <!-- /results -->); nothing checked"]
    root = root or os.path.dirname(os.path.abspath(readme))
    out, n_tables = [], 0
    for marker, path, body, first in found:
        report = os.path.join(root, path)
        if not os.path.isfile(report):
            return 2, [f"error: {readme}:{marker}: the results marker names {path}, which does not exist"]
        with open(report, encoding="utf-8") as fh:
            report_tables = [[normalize(x) for x in t] for _, t in tables(fh.read().splitlines())]
        in_region = tables(body, first)
        if not in_region:
            out.append(f"{readme}:{marker}: the results region for {path} holds no table")
        for start, table in in_region:
            n_tables += 1
            for line, what in check_table(start, table, report_tables):
                out.append(f"{readme}:{line}: table at line {start} does not match {path}: {what}")
    if out:
        return 1, out
    return 0, [f"{readme}: {n_tables} table(s) in {len(found)} results region(s) match their reports"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print("usage: check_readme_results.py [README.md]", file=sys.stderr)
        return 2
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # No argument: the repository's README and docs/HISTORY.md (its earlier results, paths from the root).
    docs = [(argv[0], None)] if argv else [(os.path.join(root, "README.md"), None),
                                           (os.path.join(root, "docs", "HISTORY.md"), root)]
    worst = 0
    for doc, doc_root in docs:
        code, lines = check(doc, doc_root)
        for line in lines:
            print(line, file=sys.stderr if code == 2 else sys.stdout)
        worst = max(worst, code)
    return worst


if __name__ == "__main__":
    sys.exit(main())
