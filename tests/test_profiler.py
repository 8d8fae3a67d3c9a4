"""The compiled-step profile groups the kernels a CUDA-graph replay launches by what they are."""

import pytest
import torch

from ttt_decode.bench.profiler import GROUPS, kernel_group


@pytest.mark.parametrize("name,group", [
    ("_m2_dual_kernel", "inner kernel"),
    ("_m1_primal_kernel", "inner kernel"),
    ("_ssm_step_kernel", "inner kernel"),
    ("_decode_attention_kernel", "inner kernel"),
    ("_pre_conv_kernel", "fused elementwise"),
    ("_gate_norm_kernel", "fused elementwise"),
    ("_m1_dual_gluon_kernel", "inner kernel"),
    ("_m1_primal_gluon_kernel", "inner kernel"),
    ("_qk_prep_kernel", "fused elementwise"),
    ("_conv_step_kernel", "fused elementwise"),
    ("_add_rms_norm_kernel", "fused elementwise"),
    ("sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel",
     "GEMM"),
    ("nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NTN", "GEMM"),
    ("void cutlass::Kernel2<cutlass_80_wmma_tensorop_f16_s161616gemm_f16_32x32_128x1_tn_align8>", "GEMM"),
    ("Memcpy DtoD (Device -> Device)", "copies"),
    ("_record_tokens_kernel", "copies"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<...>", "copies"),
    ("triton_poi_fused__to_copy_add_mul_0", "fused elementwise"),
    ("triton_red_fused_add_mean_mul_pow_rsqrt_1", "fused elementwise"),
    ("void at::native::vectorized_elementwise_kernel<4, ...>", "fused elementwise"),
    ("some_other_kernel", "other"),
])
def test_kernel_groups(name, group):
    assert kernel_group(name) == group and group in GROUPS


def test_compiled_profile_needs_cuda(tmp_path):
    from ttt_decode.cli import main

    if torch.cuda.is_available():
        pytest.skip("checks the CPU refusal")
    assert main(["profile", "--logdir", str(tmp_path), "--model-name", "ttt-tiny", "--device", "cpu", "--batch", "2",
                 "--genlen", "2", "--use_compile"]) != 0


@pytest.mark.gpu
def test_compiled_step_profile_breakdown(tmp_path):
    """`ttt-decode profile --use_compile` on a small model: every group present, the inner kernel and
    GEMMs found, launches counted, trace written."""
    import json

    from ttt_decode.cli import main

    assert main(["profile", "--logdir", str(tmp_path), "--model-name", "ttt-tiny-64", "--inner_net",
                 "mlp_2_dual_triton", "--batch", "4", "--genlen", "4", "--use_compile"]) == 0
    bd = json.load(open(next(tmp_path.glob("breakdown_*_compiled.json"))))
    groups = {g["group"]: g for g in bd["groups"]}
    assert set(groups) == set(GROUPS)
    assert groups["inner kernel"]["launches_per_step"] >= 1 and groups["GEMM"]["ms_per_step"] > 0
    assert bd["launches_per_step"] > 0 and next(tmp_path.glob("trace_*_compiled.json"))
