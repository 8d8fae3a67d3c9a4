"""The sweep's plan: the grid of cells it runs, and its one-line refusals."""

import pytest

from ttt_decode.cli import main


def test_promptlens_with_k_suffix_make_one_cell_per_context(tmp_path, capsys):
    rc = main(["sweep", "--logdir", str(tmp_path / "s"), "--models", "ttt-tiny", "--inner-nets", "mlp_1_dual",
               "--batches", "2,4", "--promptlens", "1,1k,4k", "--genlens", "8", "--device", "cpu", "--dry-run"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(out) == 6
    prompts = sorted({line.split("prompt=")[1].split()[0] for line in out}, key=int)
    assert prompts == ["1", "1024", "4096"]
    assert len({line.rsplit("(", 1)[1] for line in out}) == 6  # six distinct cell ids


def test_promptlen_alias_still_takes_one_length(tmp_path, capsys):
    assert main(["sweep", "--logdir", str(tmp_path / "s"), "--models", "ttt-tiny", "--batches", "2",
                 "--promptlen", "16", "--device", "cpu", "--dry-run"]) == 0
    assert "prompt=16 " in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["4x", "0", "1,-2", ""])
def test_bad_promptlens_are_one_line(tmp_path, capsys, bad):
    rc = main(["sweep", "--logdir", str(tmp_path / "s"), "--models", "ttt-tiny", "--batches", "2",
               "--promptlens", bad, "--device", "cpu", "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "token counts" in err[0] and "Traceback" not in err[0]


def _dry_run_lines(tmp_path, capsys, *extra):
    rc = main(["sweep", "--logdir", str(tmp_path / "s"), "--models", "ttt-tiny", "--inner-nets", "mlp_1_dual",
               "--batches", "2", "--genlens", "8", "--device", "cpu", "--dry-run", *extra])
    return rc, capsys.readouterr().out.splitlines()


def test_state_dtype_list_is_an_axis_of_the_grid(tmp_path, capsys):
    """--state-dtype float32,float16: one cell per state dtype (distinct ids, labelled); `default` is the
    model's own state dtype, the same cell (same id) as a sweep without --state-dtype."""
    rc, plain = _dry_run_lines(tmp_path, capsys)
    assert rc == 0 and len(plain) == 1 and "state=" not in plain[0]
    rc, two = _dry_run_lines(tmp_path, capsys, "--state-dtype", "float32,float16")
    assert rc == 0 and len(two) == 2
    assert ["state=float32" in two[0], "state=float16" in two[1]] == [True, True]
    ids = {line.rsplit("(", 1)[1] for line in two}
    assert len(ids) == 2
    rc, mixed = _dry_run_lines(tmp_path, capsys, "--state-dtype", "default,float16,float16")
    assert rc == 0 and len(mixed) == 2  # a name given twice is one cell
    assert mixed[0].rsplit("(", 1)[1] == plain[0].rsplit("(", 1)[1]  # default = no --state-dtype
    assert mixed[1].rsplit("(", 1)[1] in ids  # float16's cell is the same one in both plans


@pytest.mark.parametrize("bad", ["float16,int8", ",", "half-precision"])
def test_bad_state_dtype_list_is_one_line(tmp_path, capsys, bad):
    rc = main(["sweep", "--logdir", str(tmp_path / "s"), "--models", "ttt-tiny", "--batches", "2",
               "--state-dtype", bad, "--device", "cpu", "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--state-dtype" in err[0] and "Traceback" not in err[0], err
