"""The benchmark harness on tiny configs: cell records, sweep (OOM, resume, GPUs), traces, report, wandb."""

import json
import os
import subprocess
import sys

import pytest

from ttt_decode.bench.records import append_jsonl, read_jsonl
from ttt_decode.cli import main
from ttt_decode.ops.ttt_mlp import naive as ttt_mlp_naive
from ttt_decode.provenance import gpu_slug

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = ("time", "git_commit", "gpu", "torch", "triton", "model", "inner_net", "dtype", "state_dtype", "batch",
            "promptlen", "genlen", "compile", "cuda_graph", "status", "prefill_ms", "decode_s", "decode_tokens_per_s",
            "step_ms", "peak_mem_gb", "state_bytes_per_seq", "bytes_per_step", "flops_per_step", "achieved_gb_per_s",
            "pct_of_roofline", "cold_start_s", "per_seq_tokens_per_s", "prefill_tokens_per_s", "e2e_s",
            "weights_source", "ttt_path", "tf32_matmul", "step_ms_early", "step_ms_late",
            "step_ms_by_minibatch_position", "floor_ms", "roofline", "command")


@pytest.fixture(autouse=True)
def calibration_cache(tmp_path, monkeypatch):
    # Cells measure (and cache) the CPU roofline once per test directory, never in the user's home.
    monkeypatch.setenv("TTT_DECODE_CACHE", str(tmp_path / "cache"))


def run_script(*argv, env=None, check=True):
    e = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"), **(env or {}))
    r = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, env=e, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_seed_style_command_writes_a_valid_record(tmp_path):
    logdir = tmp_path / "M2_decode"
    run_script("benchmark_prefill_decode.py", "--logdir", str(logdir), "--model-name", "ttt-tiny", "--mode", "decode",
               "--batch", "2", "--promptlen", "1", "--genlen", "8", "--inner_net", "mlp_2_dual", "--no_cg",
               "--device", "cpu", "--repeats", "2")
    rec = read_jsonl(str(logdir / "results.jsonl"))[-1]
    missing = [k for k in REQUIRED if k not in rec]
    assert not missing, missing
    assert rec["status"] == "ok" and rec["kind"] == "bench"
    assert rec["decode_tokens_per_s"] == pytest.approx(2 * 8 / rec["decode_s"])
    assert rec["step_ms"]["n"] == 16 and rec["step_ms"]["p10"] <= rec["step_ms"]["median"] <= rec["step_ms"]["p90"]
    assert rec["ttt_path"] == "torch_dual" and rec["inner_net"] == "mlp_2_dual"
    assert rec["m2_defer_w1"] is ttt_mlp_naive.DEFER_W1  # which convention ran (DESIGN section 9.8)
    assert rec["step_options"] == {"down_slices": 1, "fused_swiglu": False, "fused_gate_norm": False}
    assert set(rec["step_ms_by_minibatch_position"]) == {str(p) for p in range(1, 9)}
    assert 0 < rec["pct_of_roofline"] and rec["bytes_per_step"] > rec["weight_bytes"]
    assert "decode" in (logdir / "logging.log").read_text()
    assert rec["cell_id"] and rec["memory_estimate_gb"] > 0


def test_seed_script_says_what_it_is_doing(tmp_path):
    """Run bare, the seed's script reports the cell, the estimate, calibration, warm-up and each timed run."""
    r = run_script("benchmark_prefill_decode.py", "--logdir", str(tmp_path), "--model-name", "ttt-tiny", "--batch", "2",
                   "--genlen", "4", "--device", "cpu", "--repeats", "2")
    progress = [line for line in r.stderr.splitlines() if line.startswith(("bench:", "calibrating"))]
    expected = ["ttt-tiny (default inner net) decode batch 2 prompt 1 genlen 4 float16 on cpu: building the model",
                "estimated memory", "calibrating cpu", "allocating the state", "untimed run (4 steps)",
                "2 timed run(s), about", "timed run 1/2", "timed run 2/2"]
    for want, line in zip(expected, progress):
        assert want in line, (want, progress)
    assert len(progress) == len(expected), progress
    assert "decode" in r.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("mode", ["prefill", "prefill_decode"])
def test_prefill_modes(tmp_path, mode, capsys):
    assert main(["bench", "--logdir", str(tmp_path), "--model-name", "ttt-tiny", "--inner-net", "mlp_1_dual",
                 "--mode", mode, "--batch", "2", "--promptlen", "20", "--genlen", "4", "--device", "cpu",
                 "--repeats", "1", "--dtype", "float32"]) == 0
    rec = read_jsonl(str(tmp_path / "results.jsonl"))[-1]
    assert rec["prefill_tokens_per_s"] > 0 and rec["prefill_ms_stats"]["n"] == 1
    assert ("decode_tokens_per_s" in rec) == (mode == "prefill_decode")


def test_mamba_and_transformer_cells(tmp_path):
    for name in ("mamba-tiny", "llama-tiny"):
        assert main(["bench", "--logdir", str(tmp_path), "--model-name", name, "--batch", "2", "--genlen", "4",
                     "--device", "cpu", "--repeats", "1", "--dtype", "float32"]) == 0
    recs = read_jsonl(str(tmp_path / "results.jsonl"))
    assert [r["inner_net"] for r in recs] == ["mamba_ref", "attn_ref"]
    assert recs[0]["step_options"] == {"out_slices": 1} and recs[1]["step_options"] == {}
    assert recs[0]["state_dtype"] == "float32" and "context_for_cost" in recs[1]


@pytest.mark.parametrize("argv,needle", [
    (["--batch", "0"], "must be >= 1"),
    (["--model-name", "ttt-9b"], "unknown model"),
    (["--mode", "train"], "invalid choice"),
])
def test_bad_input_one_line(tmp_path, argv, needle):
    r = run_script("benchmark_prefill_decode.py", "--logdir", str(tmp_path), "--device", "cpu", *argv, check=False)
    assert r.returncode == 2 and needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "results.jsonl").exists()


def test_runtime_failure_becomes_a_record(tmp_path, monkeypatch):
    """An allocation failure inside a cell is recorded as oom, earlier lines untouched."""
    import ttt_decode.decode.engine as engine

    path = tmp_path / "results.jsonl"
    append_jsonl(str(path), {"kind": "bench", "status": "ok", "note": "earlier"})

    def boom(*a, **k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB")

    monkeypatch.setattr(engine.DecodeSession, "__init__", boom)
    assert main(["bench", "--logdir", str(tmp_path), "--model-name", "ttt-tiny", "--batch", "2", "--genlen", "4",
                 "--device", "cpu"]) == 3
    recs = read_jsonl(str(path))
    assert recs[0]["note"] == "earlier" and recs[1]["status"] == "oom" and "allocate" in recs[1]["error"]


def sweep(tmp_path, *extra, env=None, check=True):
    return run_script("-m", "ttt_decode.cli", "sweep", "--logdir", str(tmp_path), "--models", "ttt-tiny",
                      "--inner-nets", "mlp_1_dual", "--genlens", "4", "--device", "cpu", "--repeats", "1",
                      "--dtype", "float32", *extra, env=env, check=check)


def test_sweep_records_oom_and_goes_on(tmp_path):
    # B=3000000: the state alone is ~200 GB; the cell's process is capped at 4 GB of address space, so
    # its allocation really fails inside the cell. The estimate is told of 100 TB (--max-memory-gb), so
    # neither the sweep nor the cell refuses the cell beforehand.
    sweep(tmp_path, "--batches", "1,3000000,2", "--cell-mem-limit-gb", "4", "--max-memory-gb", "100000")
    recs = read_jsonl(str(tmp_path / "results.jsonl"))
    by_batch = {r["batch"]: r for r in recs}
    assert by_batch[3000000]["status"] == "oom" and "estimate" not in by_batch[3000000]["error"]
    assert by_batch[1]["status"] == by_batch[2]["status"] == "ok"


def test_sweep_estimate_and_resume(tmp_path):
    r = sweep(tmp_path, "--batches", "1,2,100000000", "--max-memory-gb", "8")
    recs = read_jsonl(str(tmp_path / "results.jsonl"))
    est = [x for x in recs if x["batch"] == 100000000][0]
    assert est["status"] == "oom" and est["error"].startswith("estimate")
    assert "3 to run" in r.stdout
    # Resume: with one more batch size only that cell runs.
    r = sweep(tmp_path, "--batches", "1,2,100000000,3", "--max-memory-gb", "8")
    assert "3 already recorded, 1 to run" in r.stdout
    recs = read_jsonl(str(tmp_path / "results.jsonl"))
    assert sorted(x["batch"] for x in recs) == [1, 2, 3, 100000000]


def test_sweep_over_fake_gpus_each_cell_once_none_lost(tmp_path):
    """--gpus 5,7: each cell's process sees exactly one of them; a killed cell is recorded, not lost."""
    r = sweep(tmp_path, "--batches", "1,2,3,4", "--gpus", "5,7", env={"TTT_DECODE_FAULT_INJECT": "kill:batch=3"},
              check=False)
    assert r.returncode == 1  # one cell was killed
    recs = read_jsonl(str(tmp_path / "results.jsonl"))
    assert sorted(x["batch"] for x in recs) == [1, 2, 3, 4]
    assert len({x["cell_id"] for x in recs}) == 4
    killed = [x for x in recs if x["batch"] == 3][0]
    assert killed["status"] == "killed" and killed["gpu_assigned"] in ("5", "7")
    ok = [x for x in recs if x["status"] == "ok"]
    assert all(x["cuda_visible_devices"] in ("5", "7") and x["gpu_assigned"] == x["cuda_visible_devices"] for x in ok)
    # Resume does not run anything twice, and exits as the run that recorded the cells did.
    r = sweep(tmp_path, "--batches", "1,2,3,4", "--gpus", "5,7", check=False)
    assert "4 already recorded, 0 to run" in r.stdout and r.returncode == 1
    # --retry killed runs the killed cell again (no fault now); its newest record is ok: exit 0, then and after.
    r = sweep(tmp_path, "--batches", "1,2,3,4", "--gpus", "5,7", "--retry", "killed,error")
    assert "3 already recorded, 1 to run (1 retried: --retry error,killed)" in r.stdout
    recs = read_jsonl(str(tmp_path / "results.jsonl"))
    assert len(recs) == 5 and [x["status"] for x in recs if x["batch"] == 3] == ["killed", "ok"]
    r = sweep(tmp_path, "--batches", "1,2,3,4", "--gpus", "5,7", "--retry", "killed,error")
    assert "4 already recorded, 0 to run" in r.stdout and len(read_jsonl(str(tmp_path / "results.jsonl"))) == 5


def test_profile_trace_is_chrome_json_with_stage_names(tmp_path):
    assert main(["profile", "--logdir", str(tmp_path), "--model-name", "ttt-tiny", "--inner-net", "mlp_2_dual",
                 "--batch", "2", "--genlen", "3", "--device", "cpu", "--dtype", "float32"]) == 0
    traces = [f for f in os.listdir(tmp_path) if f.startswith("trace_") and f.endswith(".json")]
    assert len(traces) == 1
    trace = json.loads((tmp_path / traces[0]).read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    for stage in ("ttt.proj", "ttt.inner_loop", "ttt.gate_norm", "mlp", "lm_head", "sampling", "pre_conv"):
        assert stage in names, stage
    bd = read_jsonl(str(tmp_path / "results.jsonl"))[-1]["profile"]
    assert {r["stage"] for r in bd["stages"]} >= {"ttt.inner_loop", "mlp", "other"}
    assert sum(r["pct"] for r in bd["stages"]) == pytest.approx(100, abs=1.0)
    assert any(f.startswith("breakdown_") and f.endswith(".md") for f in os.listdir(tmp_path))


def test_report_table_and_png(tmp_path):
    pytest.importorskip("matplotlib")
    logdir = tmp_path / "runs"
    for b in (1, 2):
        for inner in ("mlp_1_dual", "mlp_2_dual"):
            assert main(["bench", "--logdir", str(logdir), "--model-name", "ttt-tiny", "--inner-net", inner,
                         "--batch", str(b), "--genlen", "3", "--device", "cpu", "--repeats", "1",
                         "--dtype", "float32"]) == 0
    append_jsonl(str(logdir / "results.jsonl"), {"kind": "bench", "status": "oom", "error": "estimate",
                                                 "model": "ttt-tiny",
                                                 "inner_net": "mlp_2_dual", "batch": 4096, "dtype": "float32"})
    out = tmp_path / "report"
    assert main(["report", str(logdir), "--out", str(out), "--baseline", "ttt-tiny mlp_1_dual"]) == 0
    md = (out / "report.md").read_text()
    assert "| ttt-tiny mlp_2_dual |" in md and "OOM" in md and "1.00x" in md and "B=4096" in md
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["report", str(logdir), "--out", str(out), "--baseline", "nope"]) == 2


def test_wandb_logs_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    assert main(["bench", "--logdir", str(tmp_path), "--model-name", "ttt-tiny", "--batch", "1", "--genlen", "3",
                 "--device", "cpu", "--repeats", "1", "--wandb"]) == 0
    runs = [d for d in os.listdir(tmp_path / "wandb") if d.startswith("offline-run")]
    assert len(runs) == 1


def test_wandb_missing_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert main(["bench", "--logdir", str(tmp_path), "--model-name", "ttt-tiny", "--batch", "1", "--genlen", "3",
                 "--device", "cpu", "--repeats", "1", "--wandb"]) == 2
    assert "pip install" in capsys.readouterr().err


def test_calibrate_and_slug(tmp_path, capsys):
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--device", "cpu", "--out", str(out)]) == 0
    cal = json.loads(out.read_text())
    assert cal["copy_gb_per_s"] > 0 and cal["matmul_tflops"]["float32"] > 0
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "h100" and gpu_slug("NVIDIA H200") == "h200"


def test_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    append_jsonl(str(path), {"a": 1})
    with open(path, "a") as fh:
        fh.write('{"b": ')
    assert read_jsonl(str(path)) == [{"a": 1}]
