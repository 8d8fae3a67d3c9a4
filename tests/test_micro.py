"""The kernel micro-benchmark end to end on CPU (Triton interpreter, tiny shapes): records, table, PNG."""

import json

import pytest
import torch

from ttt_decode import cli
from ttt_decode.bench import micro
from ttt_decode.errors import UserError

pytest.importorskip("matplotlib")
pytest.importorskip("pandas")  # triton.testing.perf_report builds its table with pandas

FIELDS = ("kind", "time", "commit", "gpu", "torch", "triton", "kernel", "model", "state_dtype", "batch", "us_per_layer",
          "bytes", "gb_per_s", "pct_copy_bw", "command", "copy_gb_per_s", "check")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path; the GPU path runs in scripts/micro.sh")
def test_micro_cli_writes_records_and_plot(tmp_path, capsys):
    out = tmp_path / "res" / "micro.jsonl"
    rc = cli.main(["micro", "--device", "cpu", "--batch", "2,3", "--model", "ttt-tiny", "--kernels",
                   "mlp_1_dual_triton,mlp_1_primal_compiled,mamba_step_ref", "--mamba-model", "mamba-tiny",
                   "--out", str(out), "--commit", "abc1234"])
    assert rc == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["kernel"], r["batch"]) for r in recs} == {(k, b) for k in ("mlp_1_dual_triton", "mlp_1_primal_compiled",
                                                                         "mamba_step_ref") for b in (2, 3)}
    for r in recs:
        assert all(f in r for f in FIELDS), set(FIELDS) - set(r)
        assert r["kind"] == "micro" and r["commit"] == "abc1234" and r["state_dtype"] == "float16"
        assert isinstance(r["m2_defer_w1"], bool)  # which mlp_2_dual kernel such a record would time
        assert r["us_per_layer"] > 0 and r["bytes"] > 0 and r["check"]["passed"]
        assert r["gb_per_s"] == pytest.approx(r["bytes"] / r["us_per_layer"] / 1e3, rel=1e-2)
        assert r["pct_copy_bw"] == pytest.approx(100 * r["gb_per_s"] / r["copy_gb_per_s"], rel=1e-2, abs=0.1)
        assert "micro" in r["command"]
    from ttt_decode.configs import get_config
    from ttt_decode.ops.ttt_common import inner_step_cost
    cfg = get_config("ttt-tiny")
    dual = next(r for r in recs if r["kernel"] == "mlp_1_dual_triton" and r["batch"] == 3)
    assert dual["bytes"] == 3 * inner_step_cost(False, "dual", cfg.num_heads, cfg.head_dim, cfg.mini_batch_size,
                                                2)["bytes"]
    png = tmp_path / "res" / "micro_ttt-tiny_float16.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out.strip().splitlines()
    assert table[-5].startswith("us per layer call") and table[-1].startswith("mamba_step_ref")


def test_micro_refuses_bad_flags(tmp_path):
    parser = cli.build_parser()
    for argv, match in ((["--kernels", "mlp_3_dual_triton"], "unknown kernel"), (["--batch", "0"], "positive"),
                        (["--state-dtype", "float64"], "not supported")):
        args = parser.parse_args(["micro", "--device", "cpu", "--out", str(tmp_path / "m.jsonl"), *argv])
        with pytest.raises(UserError, match=match):
            micro.main(args)


def test_gpu_folder_names():
    assert micro.gpu_folder("NVIDIA H100 80GB HBM3") == "h100"
    assert micro.gpu_folder("NVIDIA H200") == "h200"
    assert micro.gpu_folder("cpu (x86_64)") == "cpu"
