"""Bad input is one line naming the problem and the fix, found before any expensive work; never a traceback."""

import os
import re
import subprocess
import sys

import pytest
import torch

from ttt_decode.bench.records import read_jsonl
from ttt_decode.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model-name", "ttt-tiny", "--batch", "1", "--genlen", "2", "--device", "cpu", "--repeats", "1"]
SWEEP = ["--models", "ttt-tiny", "--batches", "1", "--genlens", "2", "--device", "cpu"]


@pytest.fixture(autouse=True)
def calibration_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TTT_DECODE_CACHE", str(tmp_path / "cache"))


def one_line_error(capsys, argv, code=2) -> str:
    """Run the CLI in-process; it must exit `code` with exactly one line on stderr, no traceback."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's errors
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == code, err[-2000:]
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err[-2000:]
    return err


@pytest.mark.parametrize("device", ["tpu", "CPU", "mps", "xla", "meta", "cuda:x", ""])
@pytest.mark.parametrize("command", ["generate", "bench", "sweep", "calibrate", "micro"])
def test_unsupported_device(tmp_path, capsys, command, device):
    extra = {"generate": [], "bench": ["--logdir", str(tmp_path)], "calibrate": [], "micro": [],
             "sweep": ["--logdir", str(tmp_path), "--models", "ttt-tiny", "--batches", "1"]}[command]
    err = one_line_error(capsys, [command, *extra, "--device", device])
    assert "unsupported device" in err and "cpu, cuda or cuda:N" in err


def test_generate_too_large_a_batch_is_refused_before_allocating(capsys):
    err = one_line_error(capsys, ["generate", "--batch", "1000000000", "--device", "cpu"])
    assert err.startswith("ttt-decode generate: error: estimate: batch 1000000000 needs about")
    assert "use a smaller --batch" in err


def test_bench_far_over_memory_is_recorded_oom_without_allocating(tmp_path, capsys):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert main(["bench", "--logdir", str(tmp_path), *TINY[:2], "--batch", "1000000000", "--device", "cpu"]) == 3
    rec = read_jsonl(str(tmp_path / "results.jsonl"))[-1]
    assert rec["status"] == "oom" and rec["error"].startswith("estimate: batch 1000000000")
    # Nothing the size of the state was touched (it would be about 140 TB).
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 2**20  # KiB: under 1 GiB


@pytest.mark.parametrize("model,inner,instead", [("ttt-tiny", "mlp_2_dual_triton", "mlp_2_dual"),
                                                 ("mamba-tiny", "mamba_triton", "mamba_ref"),
                                                 ("llama-tiny", "attn_triton", "attn_ref")])
def test_triton_on_cpu_without_the_interpreter(tmp_path, capsys, monkeypatch, model, inner, instead):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for argv in (["generate", "--model-name", model, "--inner_net", inner, "--device", "cpu"],
                 ["bench", "--logdir", str(tmp_path), "--model-name", model, "--inner_net", inner, "--device", "cpu",
                  "--batch", "1", "--genlen", "2"],
                 ["sweep", "--logdir", str(tmp_path), "--models", model, "--inner-nets", inner, "--batches", "1",
                  "--device", "cpu"]):
        err = one_line_error(capsys, argv)
        assert "TRITON_INTERPRET=1" in err and f"--inner_net {instead}" in err
    assert not (tmp_path / "results.jsonl").exists()


def _a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x")
    return str(path)


@pytest.mark.parametrize("command", ["bench", "profile", "sweep"])
@pytest.mark.parametrize("logdir,needle", [(_a_file, "is a file, not a directory"), (lambda p: "", "is empty")],
                         ids=["file", "empty"])
def test_bad_logdir_is_refused_before_the_cell_runs(tmp_path, capsys, monkeypatch, command, logdir, needle):
    import ttt_decode.bench.cell as cell

    def must_not_run(args):
        raise AssertionError("the cell ran")

    monkeypatch.setattr(cell, "run_cell", must_not_run)
    rest = SWEEP if command == "sweep" else TINY
    err = one_line_error(capsys, [command, "--logdir", logdir(tmp_path), *rest])
    assert needle in err


def test_seed_script_with_a_file_as_logdir(tmp_path):
    r = subprocess.run([sys.executable, "benchmark_prefill_decode.py", "--logdir", _a_file(tmp_path), *TINY],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "is a file, not a directory" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "building the model" not in r.stderr


def _one_record(tmp_path):
    assert main(["bench", "--logdir", str(tmp_path / "log"), *TINY, "--dtype", "float32"]) == 0


def test_report_unknown_metric(tmp_path, capsys):
    _one_record(tmp_path)
    capsys.readouterr()
    err = one_line_error(capsys, ["report", str(tmp_path / "log"), "--out", str(tmp_path / "rep"), "--metric",
                                  "nonsense"])
    assert "--metric 'nonsense' is not a number in any ok record" in err and "decode_tokens_per_s" in err


def test_report_out_is_a_file(tmp_path, capsys):
    _one_record(tmp_path)
    capsys.readouterr()
    err = one_line_error(capsys, ["report", str(tmp_path / "log"), "--out", _a_file(tmp_path)])
    assert "--out" in err and "is a file, not a directory" in err


@pytest.mark.parametrize("argv,needle", [
    (["--model", "mamba-tiny", "--kernels", "mlp_1_dual_triton"], "--model mamba-tiny is not a TTT config"),
    (["--model", "mamba-tiny"], "--model mamba-tiny is not a TTT config"),
    (["--kernels", "mamba_step_ref", "--mamba-model", "ttt-tiny"], "--mamba-model ttt-tiny is not a Mamba config"),
])
def test_micro_model_of_the_wrong_kind(tmp_path, capsys, argv, needle):
    err = one_line_error(capsys, ["micro", "--device", "cpu", "--batch", "2", "--out", str(tmp_path / "m.jsonl"),
                                  *argv])
    assert needle in err


@pytest.mark.parametrize("argv,needle", [
    (["--cell-timeout", "-5"], "must be a finite number > 0"),
    (["--cell-timeout", "0"], "must be a finite number > 0"),
    (["--cell-timeout", "nan"], "must be a finite number > 0"),
    (["--max-memory-gb", "-1"], "must be a finite number > 0"),
    (["--retry", "error,crashed"], "unknown status crashed"),
    (["--models", "ttt-9b"], "unknown model 'ttt-9b'"),
    (["--models", "mamba-tiny", "--inner-nets", "mamba_fast"], "unknown inner net 'mamba_fast' for a Mamba model"),
])
def test_sweep_flags(tmp_path, capsys, argv, needle):
    err = one_line_error(capsys, ["sweep", "--logdir", str(tmp_path), *SWEEP, *argv])
    assert needle in err
    assert not (tmp_path / "results.jsonl").exists()


def _nan_weights(load_model):
    def load(*args, **kwargs):
        model = load_model(*args, **kwargs)
        with torch.no_grad():
            model.embed.weight.fill_(float("nan"))
        return model
    return load


def test_nan_weights_are_reported_not_decoded(tmp_path, capsys, monkeypatch):
    import ttt_decode.decode.cli_generate as cli_generate
    import ttt_decode.models as models

    monkeypatch.setattr(models, "load_model", _nan_weights(models.load_model))
    monkeypatch.setattr(cli_generate, "load_model", models.load_model)
    assert main(["bench", "--logdir", str(tmp_path), *TINY, "--dtype", "float32"]) == 1
    rec = read_jsonl(str(tmp_path / "results.jsonl"))[-1]
    assert rec["status"] == "error" and "non-finite logits (NaN/inf) in the prefill" in rec["error"]
    capsys.readouterr()
    err = one_line_error(capsys, ["generate", "--device", "cpu", "--genlen", "3", "--dtype", "float32"])
    assert "non-finite logits" in err


def _readme_tables():
    """(header cells, row cells) of every Markdown table in README.md and docs/HISTORY.md (its earlier results)."""
    lines = []
    for doc in ("README.md", os.path.join("docs", "HISTORY.md")):
        with open(os.path.join(ROOT, doc)) as fh:
            lines += fh.read().splitlines() + [""]
    tables, header = [], None
    for line in lines:
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [c.strip("`").lower() for c in cells]
        elif not set(line) <= set("|-: "):
            tables.append((header, cells))
    return tables


def test_every_model_and_inner_net_the_readme_names_exists():
    from ttt_decode import registry
    from ttt_decode.configs import get_config
    from ttt_decode.models import BASELINE_PREFIXES

    inner_nets = set(registry.names())
    models, inners = set(), set()
    for header, cells in _readme_tables():
        for col, text in zip(header, cells):
            names = re.findall(r"`([^`]+)`", text)
            if col == "--model-name":
                models.update(names)
            elif col == "model" and text:
                # Results tables: "mamba-1.4b (ours, fp32 SSM state)", "ttt-1b M1": the name is the first word.
                models.add(text.split()[0])
            elif col in ("--inner_net", "inner loop"):
                inners.update(n for n in names if "*" not in n)
    assert {"ttt-tiny-transformer-backbone", "llama-tiny", "state-spaces/mamba-1.4b"} <= models
    for name in models:
        prefix, sep, rest = name.partition(":")
        if sep:
            assert prefix in BASELINE_PREFIXES, name
            name = rest
        get_config(name)  # UserError for a name that does not exist
    assert {"mlp_2_dual", "mamba_triton", "attn_ref", "mlp_2_primal_triton"} <= inners
    assert inners <= inner_nets, inners - inner_nets


def test_a_bad_m2_convention_switch_is_one_line_before_any_work(tmp_path):
    """TTT_DECODE_M2_DEFER_W1 takes 0 or 1 (TTT-MLP's cache convention): another value is a one-line error of
    the command that builds a TTT-MLP model (exit 2), not a traceback at import and not a silent default."""
    env = {**os.environ, "TTT_DECODE_M2_DEFER_W1": "false", "PYTHONPATH": os.path.join(ROOT, "src")}
    r = subprocess.run([sys.executable, "-m", "ttt_decode.cli", "generate", "--model-name", "ttt-tiny", "--batch", "2",
                        "--promptlen", "4", "--genlen", "2", "--device", "cpu"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == ("ttt-decode generate: error: TTT_DECODE_M2_DEFER_W1='false' is not 0 or 1 (1: "
                                "TTT-MLP's decode defers the last token's W1 term, 0: it keeps W1 current, the kernel "
                                "as before; unset it for the default, 0)")
    r = subprocess.run([sys.executable, "-m", "ttt_decode.cli", "doctor"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0 and "[--] TTT_DECODE_M2_DEFER_W1='false' is not 0 or 1" in r.stdout
