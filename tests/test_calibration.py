"""The roofline calibration never stores or uses a zero, negative, non-finite or absurd rate."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from ttt_decode.bench import roofline
from ttt_decode.bench.records import read_jsonl
from ttt_decode.cli import main
from ttt_decode.provenance import gpu_name

CPU = torch.device("cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def calibration_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TTT_DECODE_CACHE", str(tmp_path / "cache"))


def fake_rates(monkeypatch, matmul, copy=(7.25,)):
    """Measurements return these values in turn (the last one repeats); returns the matmul call log."""
    calls = []

    def tflops(device, dtype, **kw):
        calls.append(kw.get("min_total_ms"))
        return matmul[min(len(calls), len(matmul)) - 1]

    copies = []

    def gbs(device, **kw):
        copies.append(1)
        return copy[min(len(copies), len(copy)) - 1]

    monkeypatch.setattr(roofline, "measure_matmul_tflops", tflops)
    monkeypatch.setattr(roofline, "measure_copy_bandwidth", gbs)
    return calls


def test_a_loaded_cpus_low_rate_keeps_its_significant_digits(monkeypatch):
    # A CPU with two busy processes on its cores multiplies at a few hundredths of a TFLOP/s.
    fake_rates(monkeypatch, [0.043719])
    cal = roofline.calibrate(CPU)
    assert cal["matmul_tflops"] == {"float32": 0.04372} and cal["copy_gb_per_s"] == 7.25
    fl = roofline.floor(10**6, 10**9, cal, torch.float32)
    assert fl["compute_floor_ms"] == pytest.approx(1e9 / 0.04372e12 * 1e3) and math.isfinite(fl["floor_ms"])


def test_an_implausible_measurement_is_repeated_longer(monkeypatch):
    calls = fake_rates(monkeypatch, [0.0, -1.0, 0.05])
    cal = roofline.calibrate(CPU)
    assert cal["matmul_tflops"]["float32"] == 0.05
    assert calls == [200.0, 400.0, 800.0]  # each attempt measures twice as long


def test_a_device_that_never_measures_plausibly_is_refused_and_nothing_is_cached(monkeypatch):
    fake_rates(monkeypatch, [float("nan")])
    with pytest.raises(roofline.CalibrationError, match="matmul_tflops.float32 is nan"):
        roofline.load_or_measure(CPU)
    assert not os.path.exists(roofline.cache_path(gpu_name(CPU)))


@pytest.mark.parametrize("content", [
    {"matmul_tflops": {"float32": 0.0}},  # what one decimal stored for a loaded CPU
    {"copy_gb_per_s": -3.0},
    {"copy_gb_per_s": float("inf")},
    {"matmul_tflops": {"float32": 5e9}},
    {"matmul_tflops": {}},
    "torn",
], ids=["zero-rate", "negative-copy", "inf-copy", "absurd-rate", "no-rates", "torn-json"])
def test_an_unusable_cached_calibration_is_measured_again(monkeypatch, capsys, content):
    fake_rates(monkeypatch, [0.0437])
    path = roofline.cache_path(gpu_name(CPU))
    os.makedirs(os.path.dirname(path))
    if content == "torn":
        text = '{"gpu": "cpu'
    else:
        text = json.dumps({"gpu": gpu_name(CPU), "copy_gb_per_s": 7.0, "matmul_tflops": {"float32": 0.1}, **content})
    with open(path, "w") as fh:
        fh.write(text)
    cal, where = roofline.load_or_measure(CPU)
    assert where == "measured" and cal["matmul_tflops"]["float32"] == 0.0437
    assert f"calibration cache {path}" in capsys.readouterr().err
    assert roofline.load_or_measure(CPU) == (cal, "cache")


def _write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("make,needle", [
    (lambda p: _write(p, "{bad"), "is not valid JSON"),
    (lambda p: str(p), "not found"),
    (lambda p: _write(p, json.dumps({"gpu": gpu_name(CPU), "copy_gb_per_s": 7.0, "matmul_tflops": {"float32": 0.0}})),
     "matmul_tflops.float32 is 0"),
    (lambda p: _write(p, json.dumps({"gpu": "NVIDIA H100 80GB HBM3", "copy_gb_per_s": 2966.0,
                                     "matmul_tflops": {"float16": 757.0}})), "was measured on 'NVIDIA H100"),
], ids=["corrupt", "missing", "zero-rate", "other-device"])
def test_a_bad_calibration_file_is_one_line_naming_it(tmp_path, capsys, make, needle):
    path = make(tmp_path / "cal.json")
    assert main(["bench", "--logdir", str(tmp_path / "log"), "--model-name", "ttt-tiny", "--batch", "1", "--genlen",
                 "2", "--device", "cpu", "--calibration", path]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and f"calibration file {path}" in err and "ttt-decode calibrate --out" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "log" / "results.jsonl").exists()


def _on_one_cpu(nice: int = 0):
    """preexec_fn: run on one CPU only (the first this test may use) at this niceness."""
    cpu = min(os.sched_getaffinity(0))

    def pin():
        os.sched_setaffinity(0, {cpu})
        os.nice(nice)
    return pin


@pytest.mark.slow
def test_a_cell_under_full_cpu_load_still_ends_ok(tmp_path):
    """Two busy processes on the cell's core while it calibrates (fresh cache) and runs. The cell runs at
    nice 5, so its share of the core (about 14%) makes the matmul rate it measures a few hundredths of a
    TFLOP/s on any CPU: what one decimal used to store as 0.0 (and every later cell divided by)."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=_on_one_cpu()) for _ in range(2)]
    try:
        r = subprocess.run([sys.executable, "-m", "ttt_decode.cli", "bench", "--logdir", str(tmp_path),
                            "--model-name", "ttt-tiny", "--inner-net", "mlp_1_dual", "--batch", "2", "--genlen", "2",
                            "--device", "cpu", "--repeats", "1", "--dtype", "float32"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600, preexec_fn=_on_one_cpu(nice=5),
                           env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src")))
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert r.returncode == 0, r.stderr[-3000:]
    rec = read_jsonl(str(tmp_path / "results.jsonl"))[-1]
    assert rec["status"] == "ok" and rec["roofline"]["source"] == "measured"
    assert rec["roofline"]["matmul_tflops"] > 0 and rec["floor_ms"] > 0
