"""`ttt-decode check` compares decode paths and can fail; `ttt-decode doctor` reports one line per item."""

import json

import pytest
import torch

from ttt_decode import models
from ttt_decode.cli import main
from ttt_decode.decode.check import run_checks, tv_distance


def test_check_passes_on_consistent_model(tmp_path, capsys):
    out = tmp_path / "check.jsonl"
    assert main(["check", "--model-name", "ttt-tiny", "--device", "cpu", "--dtype", "float32", "--steps", "18",
                 "--batch", "2", "--out", str(out)]) == 0
    rec = json.loads(out.read_text().splitlines()[0])
    by_name = {r["check"]: r for r in rec["results"]}
    assert by_name["decode_vs_forward"]["passed"] and by_name["decode_vs_forward"]["steps"] == 19
    assert by_name["graph_vs_eager"]["passed"] is None  # needs CUDA
    assert by_name["repeat"]["max_abs_diff"] == 0.0
    assert by_name["fidelity"]["argmax_differ_frac"] == 0.0
    assert "all checks passed" in capsys.readouterr().out


def test_check_fails_when_paths_differ():
    """A float16 model against its float32 reference with a tolerance below fp16 rounding must fail."""
    model = models.randomize_(models.build("ttt-tiny", inner_net="mlp_1_dual", dtype="float16", device="cpu"))
    rows = run_checks(model, batch=2, steps=8, checks=("fidelity",), tol=1e-6, progress=None)
    assert rows[0]["passed"] is False and rows[0]["max_rel_err"] > 1e-6
    assert main(["check", "--model-name", "ttt-tiny", "--device", "cpu", "--checks", "fidelity", "--tol", "1e-9",
                 "--steps", "4"]) == 1


def test_state_fidelity_measures_the_state_dtype_alone():
    """Same weights and path: a float32 state against a float32 reference is exact; a bfloat16 state
    differs by its rounding and passes bf16's tolerance; too tight a tolerance fails."""
    for name, net in (("ttt-tiny", "mlp_2_dual"), ("mamba-tiny", "mamba_ref")):
        model = models.randomize_(models.build(name, inner_net=net, dtype="float32", device="cpu"))
        same = run_checks(model, batch=2, steps=20, checks=("state_fidelity",), state_dtype=torch.float32,
                          progress=None)[0]
        assert same["passed"] and same["max_rel_err"] == 0.0 and same["tv_max"] == 0.0, (name, same)
        bf16 = run_checks(model, batch=2, steps=20, checks=("state_fidelity",), state_dtype=torch.bfloat16,
                          progress=None)[0]
        assert bf16["passed"] and 0.0 < bf16["max_rel_err"] < 1e-1 and bf16["tol"] == 1e-1, (name, bf16)
        assert bf16["reference"] == "state in float32" and bf16["state_dtype"] == "bfloat16"
        tight = run_checks(model, batch=2, steps=20, checks=("state_fidelity",), state_dtype=torch.bfloat16,
                           tol=1e-7, progress=None)[0]
        assert tight["passed"] is False


def test_check_rejects_unknown_check(capsys):
    assert main(["check", "--device", "cpu", "--checks", "nope"]) == 2
    assert "unknown check" in capsys.readouterr().err


def test_tv_distance_bounds():
    a = torch.randn(2, 3, 7, dtype=torch.float64)
    assert torch.allclose(tv_distance(a, a), torch.zeros(3, dtype=torch.float64))
    far = torch.full((2, 3, 7), -1e9, dtype=torch.float64)
    near = far.clone()
    far[..., 0], near[..., 1] = 0.0, 0.0
    assert torch.allclose(tv_distance(far, near), torch.ones(3, dtype=torch.float64))


def test_doctor_lists_packages(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("[ok] torch") for line in out)
    assert any("mamba_ssm" in line for line in out)
    assert all(line.startswith(("[ok]", "[--]")) for line in out)


def test_doctor_names_known_bad_combinations(monkeypatch, capsys):
    """Triton 3.6's interpreter with numpy >= 2.4 is named in one line (a CPU machine without a GPU)."""
    import ttt_decode.ops.kernel_op as kernel_op

    if torch.cuda.is_available():
        pytest.skip("the interpreter combination matters only without a GPU")
    monkeypatch.setattr(kernel_op, "interpreter_problem", lambda: "the Triton 3.6.0 interpreter cannot run X")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "[--] known to fail: the Triton 3.6.0 interpreter cannot run X" in out


def test_doctor_names_a_bad_split_k_switch(monkeypatch, capsys):
    monkeypatch.setenv("TTT_DECODE_SPLIT_K", "many")
    main(["doctor"])
    out = capsys.readouterr().out
    assert "[--] TTT_DECODE_SPLIT_K='many' is not auto, 0 or a number of slices" in out
