"""scripts/check_readme_results.py: the README's results tables are taken verbatim from the reports they
name; on the real README, and on a README made here from a report of synthetic records."""

import importlib.util
import os
import subprocess
import sys

import pytest

from report_records import study_records, write
from ttt_decode.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "check_readme_results.py")
_spec = importlib.util.spec_from_file_location("check_readme_results", SCRIPT)
checker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checker)
# Built from parts: a literal path of a report that is not in the repository would be a dangling citation.
REPORT = "/".join(("exp", "results", "h200", "study", "report.md"))


def run(readme):
    return subprocess.run([sys.executable, SCRIPT, str(readme)], capture_output=True, text=True, timeout=60)


def test_the_repository_readme_matches_its_reports():
    code, lines = checker.check(os.path.join(ROOT, "README.md"))
    assert code == 0, "\n".join(lines)
    assert len(lines) == 1 and ("nothing checked" in lines[0] or "match their reports" in lines[0])


def test_the_results_history_matches_its_reports():
    """docs/HISTORY.md (the README's earlier results, moved there) names its reports from the repository root."""
    code, lines = checker.check(os.path.join(ROOT, "docs", "HISTORY.md"), root=ROOT)
    assert code == 0, "\n".join(lines)
    assert len(lines) == 1 and "match their reports" in lines[0]


@pytest.fixture(scope="module")
def report_md(tmp_path_factory):
    pytest.importorskip("matplotlib")
    root = tmp_path_factory.mktemp("repo")
    write(root / "runs" / "results.jsonl", study_records())
    assert main(["report", str(root / "runs"), "--out", str(root / os.path.dirname(REPORT))]) == 0
    return root, (root / REPORT).read_text().splitlines()


def _table(lines, header, nth=0):
    starts = [i for i, line in enumerate(lines) if line == header]
    i = starts[nth]
    end = next(j for j in range(i, len(lines) + 1) if j == len(lines) or not lines[j].startswith("|"))
    return lines[i:end]


def _readme(root, *tables, path=REPORT):
    body = ["# Project", "", "Some text.", "", f"<!-- results: {path} -->", ""]
    for t in tables:
        body += t + ["", "A sentence between tables."]
    body += ["<!-- /results -->", "", "More text.", ""]
    readme = root / "README.md"
    readme.write_text("\n".join(body))
    return readme


def test_tables_copied_from_the_report_match(report_md):
    root, lines = report_md
    ctx = _table(lines, "| model | batch | ctx 1 | ctx 1k | ctx 4k | ctx 16k | ctx 32k | growth |")
    const = _table(lines, "| model | batch | prompt | genlen | early ms | late ms | difference | within 1% |")
    # Spacing may differ; rows may be left out.
    respaced = [line.replace(" | ", "|").replace("|---", "| :---: ") for line in const]
    readme = _readme(root, ctx, respaced[:3] + respaced[4:])
    r = run(readme)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == f"{readme}: 2 table(s) in 1 results region(s) match their reports"


def test_a_changed_number_is_named_by_readme_line(report_md):
    root, lines = report_md
    ctx = _table(lines, "| model | batch | ctx 1 | ctx 1k | ctx 4k | ctx 16k | ctx 32k | growth |")
    changed = list(ctx)
    changed[3] = changed[3].replace("1.00x", "0.99x")
    readme = _readme(root, ctx, changed)
    r = run(readme)
    assert r.returncode == 1
    out = r.stdout.strip().splitlines()
    second = 7 + len(ctx) + 2  # the second table's header line
    assert out == [f"{readme}:{second + 3}: table at line {second} does not match {REPORT}: row "
                   f"{checker.normalize(changed[3])!r} is not a row of that table"]


def test_rows_of_two_tables_with_one_header_do_not_match(report_md):
    """The prompt 16k and 32k blocks have the same header: a table with rows of both is not in the report."""
    root, lines = report_md
    head = "| model | B=64 | B=256 | knee |"
    t16, t32 = _table(lines, head, nth=2), _table(lines, head, nth=3)
    assert t16 != t32
    assert t16[:5] == t32[:5] and t16[5] != t32[5]  # only llama (the KV cache) differs
    r = run(_readme(root, t32[:2] + [t16[5], t32[5]]))
    assert r.returncode == 1 and "is not a row of that table" in r.stdout
    assert run(_readme(root, t32)).returncode == 0


def test_a_header_the_report_does_not_have(report_md):
    root, lines = report_md
    r = run(_readme(root, ["| model | B=1 |", "|---|---|", "| x | 1 |"]))
    assert r.returncode == 1 and "is not the header of any table" in r.stdout and ":7:" in r.stdout


def test_a_marker_naming_a_missing_report_is_an_error(report_md):
    root, lines = report_md
    readme = _readme(root, lines[:0], path="not-here/report.md")
    r = run(readme)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == (f"error: {readme}:5: the results marker names not-here/report.md, "
                                "which does not exist")
    assert len(r.stderr.strip().splitlines()) == 1


def test_unclosed_region_and_empty_region(tmp_path, report_md):
    root, _ = report_md
    readme = tmp_path / "README.md"
    readme.write_text(f"<!-- results: {root / REPORT} -->\n| a |\n")
    r = run(readme)
    assert r.returncode == 2 and "is not closed" in r.stderr
    readme.write_text(f"<!-- results: {root / REPORT} -->\nno table\n<!-- /results -->\n")
    r = run(readme)
    assert r.returncode == 1 and "holds no table" in r.stdout


def test_no_markers_checks_nothing_and_says_so(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nA marker inside text: `<!-- results: x.md -->`.\n")
    r = run(readme)
    assert r.returncode == 0 and "nothing checked" in r.stdout
