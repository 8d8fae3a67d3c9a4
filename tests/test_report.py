"""`ttt-decode report` on synthetic records: the knee, the context table and plot, the constant-cost table."""

import pytest

from report_records import (
    BATCHES,
    CONTEXT_BATCHES,
    CONTEXTS,
    LLAMA,
    M1,
    MODELS,
    ok_record,
    step_ms,
    study_records,
    write,
)
from ttt_decode.bench import report
from ttt_decode.cli import main


def _cells(*pairs):
    return {b: {"status": "ok", "decode_tokens_per_s": v} for b, v in pairs}


def test_knee_is_the_batch_past_which_a_doubling_adds_less_than_5_percent():
    assert report.KNEE_GAIN == 1.05
    # +7% per doubling is not a knee (the old 10% rule put one at 64), +4% is.
    assert report.knee(_cells((64, 1000), (128, 1070), (256, 1145)), "decode_tokens_per_s") is None
    assert report.knee(_cells((64, 1000), (128, 1070), (256, 1110)), "decode_tokens_per_s") == 128
    # 64 -> 256 is two doublings: +8% in all is +3.9% per doubling, a knee at 64 (8% alone would not be).
    assert report.knee(_cells((64, 1000), (256, 1080)), "decode_tokens_per_s") == 64
    # +12% over two doublings is +5.8% per doubling: no knee; 48 -> 64 (+3%) is +7.4% per doubling: none either.
    assert report.knee(_cells((64, 1000), (256, 1120)), "decode_tokens_per_s") is None
    assert report.knee(_cells((48, 1000), (64, 1030)), "decode_tokens_per_s") is None
    # Failed cells are left out; the gain is taken between the ok neighbours.
    cells = _cells((64, 1000), (256, 1080))
    cells[128] = {"status": "oom"}
    assert report.knee(cells, "decode_tokens_per_s") == 64
    assert report.gain_per_doubling(64, 1000, 256, 1210) == pytest.approx(1.10)


@pytest.fixture
def study(tmp_path):
    pytest.importorskip("matplotlib")
    logdir = tmp_path / "runs"
    write(logdir / "results.jsonl", study_records())
    out = tmp_path / "report"
    assert main(["report", str(logdir), "--out", str(out), "--baseline", "mamba-1.4b mamba_triton"]) == 0
    return out, (out / "report.md").read_text()


def _table(md: str, first_line: str) -> list[str]:
    """The table whose header is first_line, as its lines."""
    lines = md.splitlines()
    i = lines.index(first_line)
    end = next((j for j in range(i, len(lines)) if not lines[j].startswith("|")), len(lines))
    return lines[i:end]


def _tput(model, b, p=1):
    return report._fmt(b / (step_ms(model, b, p) / 1e3))


def test_one_block_of_throughput_tables_per_prompt_length(study):
    _, md = study
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings == [f"## Prompt length {p}" for p in (1, 1024, 4096, 16384, 32768)]
    prompt1 = md.split("## Prompt length 1\n")[1].split("## ")[0]
    assert "prompt 1, genlen 128 unless the cell says otherwise" in prompt1
    table = _table(prompt1, "| model | B=64 | B=128 | B=256 | B=512 | B=1024 | knee |")
    # Rows are not split by genlen; B=64 shows the genlen 128 figure (the main genlen), not the genlen 2048 one.
    assert len(table) == 2 + 4
    assert table[2] == (f"| ttt-1b mlp_1_dual_triton | {_tput(M1, 64)} | {_tput(M1, 128)} | {_tput(M1, 256)} | "
                        f"{_tput(M1, 512)} | {_tput(M1, 1024)} (genlen 2048) |  |")
    assert table[3] == "| ttt-1b mlp_2_dual_triton | 10.0 k | 10.0 k | 10.0 k | 10.0 k |  | 64 |"
    # The failure record (no inner net: the default was asked for) joins llama's row.
    assert table[5].startswith("| llama-1.3b attn_triton |") and "| OOM |  |" in table[5]
    # At 32k llama's B=256 did not fit; the other rows and prompt lengths are complete.
    prompt32k = md.split("## Prompt length 32768\n")[1]
    row = [line for line in _table(prompt32k, "| model | B=64 | B=256 | knee |") if "llama" in line][0]
    assert row == f"| llama-1.3b attn_triton | {_tput(LLAMA, 64, 32768)} | OOM |  |"
    assert md.count("Speed-up against **mamba-1.4b mamba_triton** (= 1x):") == 5


def test_step_time_against_context_table(study):
    out, md = study
    assert "Step time against context (ms per step, batch B)" in md
    table = _table(md, "| model | batch | ctx 1 | ctx 1k | ctx 4k | ctx 16k | ctx 32k | growth |")
    # One line per (row, batch) measured at two or more prompt lengths; B=128 and B=512 only at prompt 1.
    assert [line.split(" | ")[:2] for line in table[2:]] == [
        ["| " + " ".join(m), str(b)] for m in MODELS for b in CONTEXT_BATCHES]
    m1 = [line for line in table if line.startswith("| ttt-1b mlp_1_dual_triton | 64 |")][0]
    assert m1 == "| ttt-1b mlp_1_dual_triton | 64 | 3.28 | 3.28 | 3.28 | 3.28 | 3.28 | 1.00x |"
    llama = [line for line in table if line.startswith("| llama-1.3b attn_triton | ")]
    steps = [step_ms(LLAMA, 64, p) for p in (1,) + CONTEXTS]
    assert llama[0] == ("| llama-1.3b attn_triton | 64 | " + " | ".join(report._ms(s) for s in steps)
                        + f" | {steps[-1] / steps[0]:.2f}x |")
    # Growth is over the measured (ok) contexts: 1 to 16k at B=256, where 32k ran out of memory.
    g = step_ms(LLAMA, 256, 16384) / step_ms(LLAMA, 256, 1)
    assert llama[1].endswith(f" | OOM | {g:.2f}x |")
    assert (out / "context.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_constant_cost_table(study):
    _, md = study
    table = _table(md, "| model | batch | prompt | genlen | early ms | late ms | difference | within 1% |")
    assert len(table) == 2 + 5
    assert table[2] == "| ttt-1b mlp_1_dual_triton | 64 | 1 | 2048 | 3.61 | 3.62 | +0.40% | yes |"
    assert table[3] == "| ttt-1b mlp_1_dual_triton | 1024 | 1 | 2048 | 22.50 | 22.60 | +0.44% | yes |"
    assert table[-1].startswith("| llama-1.3b attn_triton | 64 | 1 | 2048 |") and table[-1].endswith("| +50.00% | no |")
    assert ("Rows with every measured cell within 1%: 3 of 4 (ttt-1b mlp_1_dual_triton, ttt-1b mlp_2_dual_triton, "
            "mamba-1.4b mamba_triton).") in md


def test_one_prompt_length_writes_no_context_plot(tmp_path):
    pytest.importorskip("matplotlib")
    logdir = tmp_path / "runs"
    write(logdir / "results.jsonl", [ok_record(m, b) for m in MODELS for b in BATCHES])
    out = tmp_path / "report"
    out.mkdir()
    (out / "context.png").write_bytes(b"stale")
    assert main(["report", str(logdir), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "## " not in md and "Step time against context" not in md and "Constant cost" not in md
    assert "prompt 1, genlen 128)" in md and "unless the cell says otherwise" not in md
    assert not (out / "context.png").exists() and (out / "throughput.png").exists()
    # The M2 row (flat throughput) has its knee at the first batch, M1 (+16% from 256 to 512) none.
    assert "| ttt-1b mlp_2_dual_triton | 10.0 k | 10.0 k | 10.0 k | 10.0 k | 64 |" in md
    m1 = " | ".join(_tput(M1, b) for b in BATCHES)
    assert f"| ttt-1b mlp_1_dual_triton | {m1} |  |" in md
