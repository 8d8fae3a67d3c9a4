"""The sweep shares torch.compile's (inductor's) and Triton's kernel caches between its cells (issue 14.4):
every cell process gets TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR under --compile-cache (default
<logdir>/.compile-cache), a variable the user set is kept, and each record names the directories the
cell saw (its `compile_cache`, written by the cell from its own environment). The Ray backend's cells
are checked in test_sweep_ray.py."""

import argparse
import os

import pytest

from ttt_decode.bench.records import read_jsonl
from ttt_decode.bench.sweep import COMPILE_CACHE_VARS, compile_cache_env
from ttt_decode.cli import main

SWEEP = ["--models", "ttt-tiny", "--inner-nets", "mlp_1_dual", "--genlens", "2", "--device", "cpu", "--repeats", "1",
         "--dtype", "float32"]
# Estimated far over this machine's RAM: recorded oom ("estimate") by the sweep itself, without running.
HUGE = "100000000"


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    """A calibration cache of the test's own, and neither cache variable set (inductor sets
    TORCHINDUCTOR_CACHE_DIR in a process that built a model, as earlier tests here did)."""
    monkeypatch.setenv("TTT_DECODE_CACHE", str(tmp_path / "calibration"))
    for var in COMPILE_CACHE_VARS.values():
        monkeypatch.delenv(var, raising=False)


def by_batch(logdir) -> dict[int, dict]:
    return {r["batch"]: r for r in read_jsonl(os.path.join(str(logdir), "results.jsonl"))}


def test_every_cell_gets_the_shared_caches_under_the_logdir(tmp_path):
    logdir = tmp_path / "log"
    assert main(["sweep", "--logdir", str(logdir), *SWEEP, "--batches", f"1,{HUGE}"]) == 0
    recs = by_batch(logdir)
    expected = {"inductor": str(logdir / ".compile-cache" / "inductor"),
                "triton": str(logdir / ".compile-cache" / "triton")}
    assert recs[1]["status"] == "ok" and recs[1]["compile_cache"] == expected  # seen by the cell process
    assert recs[int(HUGE)]["status"] == "oom" and recs[int(HUGE)]["compile_cache"] == expected  # the sweep's record
    assert all(os.path.isdir(d) for d in expected.values())


def test_a_variable_the_user_set_is_kept_and_compile_cache_moves_the_others(tmp_path, monkeypatch):
    mine = str(tmp_path / "my-triton-cache")
    monkeypatch.setenv("TRITON_CACHE_DIR", mine)
    shared = tmp_path / "shared"
    assert main(["sweep", "--logdir", str(tmp_path / "log"), *SWEEP, "--batches", "1", "--compile-cache",
                 str(shared)]) == 0
    (rec,) = by_batch(tmp_path / "log").values()
    assert rec["compile_cache"] == {"inductor": str(shared / "inductor"), "triton": mine}
    assert os.environ["TRITON_CACHE_DIR"] == mine and not (shared / "triton").exists()


def test_compile_cache_none_sets_nothing():
    args = argparse.Namespace(logdir="log", compile_cache="none")
    assert compile_cache_env(args, environ={}) == {}
    args.compile_cache = None
    assert compile_cache_env(args, environ={"TORCHINDUCTOR_CACHE_DIR": "/mine"}) == {
        "TRITON_CACHE_DIR": os.path.abspath(os.path.join("log", ".compile-cache", "triton"))}


@pytest.mark.parametrize("bad", ["empty", "file"])
def test_a_bad_compile_cache_is_one_line_before_any_cell_runs(tmp_path, capsys, bad):
    if bad == "empty":
        value = ""
    else:
        value = str(tmp_path / "a-file")
        (tmp_path / "a-file").write_text("")
    logdir = tmp_path / "log"
    assert main(["sweep", "--logdir", str(logdir), *SWEEP, "--batches", "1", "--compile-cache", value]) == 2
    err = capsys.readouterr().err
    assert "--compile-cache" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (logdir / "results.jsonl").exists()
