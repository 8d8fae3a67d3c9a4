"""Result records are never lost, glued or double-counted: the appender, the reader and the report."""

import json
import os
import resource
import signal
import subprocess
import sys

import pytest

from ttt_decode.bench import records
from ttt_decode.bench.records import append_jsonl, read_jsonl, read_records
from ttt_decode.cli import main
from ttt_decode.errors import RecordWriteError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CELL = ["--model-name", "ttt-tiny", "--inner-net", "mlp_1_dual", "--batch", "1", "--genlen", "2", "--device", "cpu",
        "--repeats", "1", "--dtype", "float32"]


@pytest.fixture(autouse=True)
def calibration_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TTT_DECODE_CACHE", str(tmp_path / "cache"))


def test_a_record_after_a_torn_line_starts_on_a_fresh_line(tmp_path):
    path = str(tmp_path / "results.jsonl")
    append_jsonl(path, {"a": 1})
    with open(path, "ab") as fh:
        fh.write(b'{"b": ')  # a writer killed mid-line
    append_jsonl(path, {"c": 2})
    append_jsonl(path, {"d": 3})
    assert read_records(path) == ([{"a": 1}, {"c": 2}, {"d": 3}], [2])
    assert "skipped 1 unreadable line" in records.unreadable_note(path, [2])


def test_a_line_that_is_not_an_object_is_unreadable(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"a": 1}\n[1, 2]\n\xff\xfe\n\n{"b": 2}\n')
    assert read_records(str(path)) == ([{"a": 1}, {"b": 2}], [2, 3])


def test_a_short_write_fails_loudly_and_the_next_record_is_whole(tmp_path, monkeypatch):
    path = str(tmp_path / "results.jsonl")
    append_jsonl(path, {"a": 1})
    real_write = os.write

    def half(fd, data):
        # Only the record under test comes up short (a disk that filled up mid-line).
        return real_write(fd, data[: len(data) // 2] if b'"short"' in data else data)

    monkeypatch.setattr(records.os, "write", half)
    with pytest.raises(RecordWriteError, match="results.jsonl: short write"):
        append_jsonl(path, {"note": "short", "pad": "x" * 100})
    monkeypatch.undo()
    append_jsonl(path, {"b": 2})
    assert read_records(path) == ([{"a": 1}, {"b": 2}], [2])


def _limit_file_size(nbytes: int):
    """preexec_fn: files of the process may not grow past nbytes (a disk that is full at that size).
    Python ignores SIGXFSZ, so an over-long write comes back short or fails with EFBIG."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return limit


def _prefill(path, nbytes: int) -> tuple[int, int]:
    """Earlier records filling path to about nbytes: (the file's size, the number of records)."""
    line = json.dumps({"kind": "bench", "status": "ok", "cell_id": "earlier", "pad": "x" * 400}) + "\n"
    path.write_text(line * (nbytes // len(line)))
    return path.stat().st_size, nbytes // len(line)


def _run(argv, tmp_path, preexec_fn=None):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    return subprocess.run([sys.executable, "-m", "ttt_decode.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=600, preexec_fn=preexec_fn)


def test_a_full_disk_is_an_error_exit_of_bench(tmp_path):
    """A record that cannot be written: exit code 4 with the file named, never 0; earlier lines intact."""
    # Room for 100 more bytes in results.jsonl: the cell's record (over 2 KB) comes back short.
    size, n = _prefill(tmp_path / "results.jsonl", 20000)
    r = _run(["bench", "--logdir", str(tmp_path), *CELL], tmp_path, _limit_file_size(size + 100))
    assert r.returncode == 4, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()[-1]
    assert "results.jsonl" in err and "short write" in err and "Traceback" not in r.stderr
    recs, bad = read_records(str(tmp_path / "results.jsonl"))
    assert len(recs) == n and all(x["cell_id"] == "earlier" for x in recs) and bad == [n + 1]


def test_a_full_disk_stops_the_sweep_with_an_error_exit(tmp_path):
    size, n = _prefill(tmp_path / "results.jsonl", 20000)
    r = _run(["sweep", "--logdir", str(tmp_path), "--models", "ttt-tiny", "--inner-nets", "mlp_1_dual",
              "--batches", "1,2", "--genlens", "2", "--device", "cpu", "--repeats", "1", "--dtype", "float32"],
             tmp_path, _limit_file_size(size + 100))
    assert r.returncode == 4, r.stdout[-2000:] + r.stderr[-2000:]
    assert "could not write its record" in r.stderr and "results.jsonl" in r.stderr
    # The sweep stopped at the first failed write: the second cell never started.
    assert "B=2" not in r.stdout + r.stderr
    recs = read_jsonl(str(tmp_path / "results.jsonl"))
    assert len(recs) == n and all(x["cell_id"] == "earlier" for x in recs)


def _bench_record(cell, batch, status="ok", tok_s=None, inner="mlp_1_dual"):
    rec = {"kind": "bench", "cell_id": cell, "model": "ttt-tiny", "inner_net": inner, "batch": batch,
           "dtype": "float32", "status": status, "gpu": "cpu (x86_64)"}
    if status == "ok":
        rec.update(decode_tokens_per_s=tok_s, floor_ms=1.0, pct_of_roofline=50.0, step_ms={"mean": 1.0})
    else:
        rec["error"] = "boom"
    return rec


def test_report_newest_record_of_a_cell_wins_and_duplicates_are_named(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = str(tmp_path / "results.jsonl")
    for rec in (_bench_record("c1", 1, tok_s=1000), _bench_record("c2", 2, "error"),
                _bench_record("c3", 4, tok_s=3000), _bench_record("c1", 1, tok_s=2000),
                _bench_record("c2", 2, tok_s=5000), _bench_record("c3", 4, "killed")):
        append_jsonl(path, rec)
    with open(path, "ab") as fh:
        fh.write(b'{"kind": "bench", "cell')
    out = tmp_path / "report"
    assert main(["report", str(tmp_path), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "| ttt-tiny mlp_1_dual | 2.0 k | 5.0 k | KILLED |" in md
    assert "3 cell(s) recorded more than once" in md and "3 older record(s) are superseded" in md
    assert "skipped 1 unreadable line" in md
    printed = capsys.readouterr().out
    assert "3 cells, 2 ok, 1 failed (3 superseded record(s) of re-run cells not counted)" in printed


def test_provenance_names_the_toolkit_switches_set(monkeypatch):
    """A record says which TTT_DECODE_* switches were set where it ran (TTT_DECODE_M2_DEFER_W1 picks the M2 dual
    kernel's cache convention, so two records of one cell can differ by it); the variables that only say where
    or for whom (commit, assigned GPU, cache folder) have fields of their own or none."""
    from ttt_decode.provenance import provenance

    for k in [k for k in __import__("os").environ if k.startswith("TTT_DECODE_")]:
        monkeypatch.delenv(k)
    assert provenance("cpu")["ttt_decode_env"] == {}
    monkeypatch.setenv("TTT_DECODE_M2_DEFER_W1", "0")
    monkeypatch.setenv("TTT_DECODE_COMMIT", "abc1234")
    monkeypatch.setenv("TTT_DECODE_CACHE", "/tmp/x")
    info = provenance("cpu")
    assert info["ttt_decode_env"] == {"TTT_DECODE_M2_DEFER_W1": "0"}
