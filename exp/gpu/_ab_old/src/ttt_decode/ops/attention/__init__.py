"""Decode attention for the Transformer baseline: naive.py (reference), triton_decode.py (kernel)."""

from ttt_decode.ops.attention import naive


def decode_attention(q, k_cache, v_cache, n_valid, impl="naive"):
    if impl == "naive":
        return naive.decode_attention(q, k_cache, v_cache, n_valid)
    from ttt_decode.ops.attention import triton_decode

    return triton_decode.decode_attention(q, k_cache, v_cache, n_valid)
