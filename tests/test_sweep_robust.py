"""The sweep records each cell exactly once: torn lines, killed sweeps, two sweeps, bad logdirs.

Cells that must be caught while running are held by fault injection ("hold:batch=N:PATH": the cell
writes its pid to PATH.started, then waits until PATH exists), so no test depends on timing luck.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import poll_until
from ttt_decode.bench.cell import FAULT_ENV
from ttt_decode.bench.records import append_jsonl, read_jsonl, read_records
from ttt_decode.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = ["--models", "ttt-tiny", "--inner-nets", "mlp_1_dual", "--genlens", "2", "--device", "cpu", "--repeats", "1",
         "--dtype", "float32"]
WAIT_S = 120


@pytest.fixture(autouse=True)
def calibration_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TTT_DECODE_CACHE", str(tmp_path / "cache"))


def _env(extra=None):
    return dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"), **(extra or {}))


def run_sweep(logdir, *extra, env=None):
    return subprocess.run([sys.executable, "-m", "ttt_decode.cli", "sweep", "--logdir", str(logdir), *SWEEP, *extra],
                          cwd=ROOT, capture_output=True, text=True, env=_env(env), timeout=600)


class Started:
    """A sweep in the background, its output in files (read while it runs)."""

    def __init__(self, logdir, name, *extra, env=None):
        self.out_path = logdir.parent / f"{name}.out"
        with open(self.out_path, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "ttt_decode.cli", "sweep", "--logdir", str(logdir),
                                          *SWEEP, *extra], cwd=ROOT, env=_env(env), stdout=out,
                                         stderr=subprocess.STDOUT)

    @property
    def output(self) -> str:
        return self.out_path.read_text()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_until(condition, what: str, timeout: float = WAIT_S):
    poll_until(condition, what, timeout)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Hold:
    """The fault injection that holds the cell of one batch size until released."""

    def __init__(self, tmp_path, batch: int):
        self.go = tmp_path / "go"
        self.started = tmp_path / "go.started"
        self.env = {FAULT_ENV: f"hold:batch={batch}:{self.go}"}

    def pids(self) -> list[int]:
        return [int(p) for p in self.started.read_text().split()] if self.started.exists() else []

    def release(self):
        self.go.touch()

    def reap(self, pids):
        """Release the held cells and wait for them (they may belong to a killed sweep); kill stragglers."""
        self.release()
        deadline = time.monotonic() + WAIT_S
        for pid in pids:
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def cell_records(logdir):
    return [r for r in read_jsonl(str(logdir / "results.jsonl")) if r.get("cell_id") != "earlier"]


def test_torn_last_line_then_new_cells_are_all_readable_and_ok(tmp_path):
    """A writer killed mid-line left a torn last line: the next cells' records start on a fresh line."""
    path = tmp_path / "results.jsonl"
    append_jsonl(str(path), {"kind": "bench", "status": "ok", "cell_id": "earlier", "batch": 64})
    with open(path, "ab") as fh:
        fh.write(b'{"kind": "bench", "status": "ok", "cell_')
    # B=100000000 also shows that the estimate is always made: on CPU against the machine's RAM.
    r = run_sweep(tmp_path, "--batches", "1,2,100000000")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "skipped 1 unreadable line(s) (torn writes; line 2)" in r.stdout
    recs, bad = read_records(str(path))
    assert bad == [2]
    new = {x["batch"]: x for x in recs if x["cell_id"] != "earlier"}
    assert sorted(new) == [1, 2, 100000000] and len(recs) == 4
    assert new[1]["status"] == new[2]["status"] == "ok"
    assert new[100000000]["status"] == "oom" and new[100000000]["error"].startswith("estimate: ")


def test_sigkill_of_the_sweep_then_an_immediate_rerun_records_each_cell_once(tmp_path):
    logdir, hold = tmp_path / "log", Hold(tmp_path, batch=1)
    first = Started(logdir, "first", "--batches", "1,2", env=hold.env)
    rerun = None
    try:
        wait_until(lambda: hold.pids(), "the first cell to start")
        orphan = hold.pids()[0]
        first.proc.kill()  # SIGKILL: the sweep cannot take its running cell down
        first.proc.wait()
        assert alive(orphan)
        rerun = Started(logdir, "rerun", "--batches", "1,2", env=hold.env)
        wait_until(lambda: "still running from an earlier sweep" in rerun.output or len(hold.pids()) > 1,
                   "the rerun to find the running cell")
        assert hold.pids() == [orphan], "the rerun started a cell whose earlier process was still running"
        hold.release()
        assert rerun.proc.wait(timeout=300) == 0, rerun.output[-3000:]
    finally:
        first.stop()
        if rerun:
            rerun.stop()
        hold.reap(hold.pids())
    recs = cell_records(logdir)
    assert sorted(r["batch"] for r in recs) == [1, 2] and len({r["cell_id"] for r in recs}) == 2
    assert all(r["status"] == "ok" for r in recs)


def test_sigterm_stops_the_running_cell_and_a_rerun_records_it_once(tmp_path):
    logdir, hold = tmp_path / "log", Hold(tmp_path, batch=1)
    first = Started(logdir, "first", "--batches", "1", env=hold.env)
    try:
        wait_until(lambda: hold.pids(), "the cell to start")
        cell = hold.pids()[0]
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(timeout=60) == 128 + signal.SIGTERM
        assert not alive(cell), "the cell outlived the sweep that was stopped"
        assert "stopped by SIGTERM" in first.output and cell_records(logdir) == []
    finally:
        first.stop()
        hold.reap(hold.pids())
    r = run_sweep(logdir, "--batches", "1")
    assert r.returncode == 0 and "1 to run" in r.stdout
    recs = cell_records(logdir)
    assert len(recs) == 1 and recs[0]["status"] == "ok"


def test_two_sweeps_started_together_on_one_logdir(tmp_path):
    logdir, hold = tmp_path / "log", Hold(tmp_path, batch=1)
    sweeps = [Started(logdir, name, "--batches", "1", env=hold.env) for name in ("a", "b")]
    try:
        wait_until(lambda: (hold.pids() and any(s.proc.poll() is not None for s in sweeps)) or len(hold.pids()) > 1,
                   "one sweep to run the cell and the other to finish")
        assert len(hold.pids()) == 1, "both sweeps ran the cell"
        loser = next(s for s in sweeps if s.proc.poll() is not None)
        winner = next(s for s in sweeps if s is not loser)
        assert loser.proc.returncode == 3
        assert "another sweep (pid " in loser.output and "is running in" in loser.output
        assert "Traceback" not in loser.output
        hold.release()
        assert winner.proc.wait(timeout=300) == 0, winner.output[-3000:]
    finally:
        for s in sweeps:
            s.stop()
        hold.reap(hold.pids())
    recs = cell_records(logdir)
    assert len(recs) == 1 and recs[0]["status"] == "ok"


def _results_is_a_directory(tmp_path):
    (tmp_path / "log" / "results.jsonl").mkdir(parents=True)
    return str(tmp_path / "log"), "is not a regular file"


def _logdir_is_a_file(tmp_path):
    (tmp_path / "log").write_text("not a directory")
    return str(tmp_path / "log"), "is a file, not a directory"


def _no_file_can_be_created(tmp_path):
    # sysfs: an existing directory in which no one, root included, may create a file.
    return "/sys", "is not writable"


@pytest.mark.parametrize("bad", [_logdir_is_a_file, _results_is_a_directory, _no_file_can_be_created])
def test_unwritable_logdir_is_refused_before_any_cell_runs(tmp_path, capsys, bad):
    logdir, needle = bad(tmp_path)
    assert main(["sweep", "--logdir", logdir, *SWEEP, "--batches", "1"]) == 2
    out, err = capsys.readouterr()
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "cells," not in out  # the sweep never reached its plan
    assert not (tmp_path / "log" / ".sweep").exists()
