"""The command line: the README demo runs, bad input gives one line and exit code 2."""

import subprocess
import sys

import pytest

from ttt_decode.cli import main
from ttt_decode.errors import UserError


def test_generate_demo_runs(capsys):
    assert main(["generate", "--model-name", "ttt-tiny", "--batch", "4", "--promptlen", "16", "--genlen", "32",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "generated ids" in out


def test_generate_m1_sampling(capsys):
    assert main(["generate", "--inner_net", "mlp_1_dual", "--device", "cpu", "--genlen", "5", "--temperature", "0.8",
                 "--top_k", "10", "--dtype", "float32"]) == 0


@pytest.mark.parametrize("argv,needle", [
    (["generate", "--model-name", "nope", "--device", "cpu"], "unknown model"),
    (["generate", "--inner_net", "mlp_9", "--device", "cpu"], "unknown inner net"),
    (["generate", "--dtype", "fp7", "--device", "cpu"], "unknown dtype"),
    (["generate", "--state-dtype", "int8", "--device", "cpu"], "unknown dtype"),
    (["generate", "--temperature", "-1", "--device", "cpu"], "temperature"),
])
def test_bad_input_one_line(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("flag", ["--batch", "--promptlen", "--genlen"])
def test_nonpositive_sizes_rejected(flag):
    r = subprocess.run([sys.executable, "-m", "ttt_decode.cli", "generate", flag, "0", "--device", "cpu"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "must be >= 1" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_registry_is_the_one_table_of_implementations():
    """Every implementation name the package accepts is in the registry with a reference that is
    itself a reference of the same family and part; the CLI's help names them all."""
    from ttt_decode import registry

    for name, impl in registry.IMPLEMENTATIONS.items():
        ref = registry.IMPLEMENTATIONS[impl.reference]
        assert ref.impl == registry.REFERENCE and (ref.family, ref.part) == (impl.family, impl.part), name
        assert impl.op_impl in ("naive", "triton")
    assert registry.reference_of("mlp_2_dual_triton") == "mlp_2_dual"
    assert registry.reference_of("mamba_triton") == "mamba_ref" and registry.reference_of("attn_ref") == "attn_ref"
    assert registry.default("ttt", "cuda", "linear") == "mlp_1_dual"
    assert registry.default("mamba", "cpu") == "mamba_ref" and registry.default("mamba", "cuda") == "mamba_triton"
    with pytest.raises(UserError, match="unknown inner net 'mamba_ref' for a TTT model"):
        registry.get("mamba_ref", "ttt")
    with pytest.raises(UserError, match="unknown inner net 'mlp_2_dual_compiled'"):
        registry.get("mlp_2_dual_compiled")  # a micro-benchmark variant, not a model's inner net
