"""Outside Mamba implementations behind model-name prefixes, as DecodeLMs in the same harness.

    hf:<name>         transformers' MambaForCausalLM (the implementation most users reach for)
    mamba-ssm:<name>  the mamba-ssm package's MambaLMHeadModel, with its own CUDA-graph generate

<name> is a Mamba config name or hub alias (random weights: exactly the weights of our model built with
the same seed, converted, so logits are comparable) or a local checkpoint directory. Each prefix is
refused with one line when its package is missing.

hf: the adapter's state is transformers' cache object, filled by the prefill; prefill and step go
through MambaForCausalLM.forward with that cache. Its cache is created by the forward itself, so the
step cannot be captured in a CUDA graph before the prefill: `supports_cuda_graph = False`, and the
engine runs it eagerly. transformers keeps the recurrent state in float32 whatever the weights are.
transformers uses mamba-ssm's and causal-conv1d's kernels when they import, else its PyTorch path;
`kernel_path` says which.

mamba-ssm: the DecodeLM contract runs through mamba-ssm's own step path (InferenceParams holding the
per-layer (conv_state [B, D, W], ssm_state [B, D, S]) that `allocate_inference_cache` would make, the
ssm state in the chosen state dtype); that step is graph-capturable. `native_generate` runs
mamba-ssm's own `generate(..., cg=True)` (its CUDA graphs; its state dtype is the weight dtype).
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass, field

import torch

from ttt_decode.configs import MambaConfig, get_config
from ttt_decode.errors import MissingPackageError, UserError
from ttt_decode.models.common import DecodeLM
from ttt_decode.models.mamba import mamba_decode_cost, mamba_state_bytes_per_seq
from ttt_decode.models.mamba_checkpoint import hf_config, published_state_dict

PREFIXES = ("hf", "mamba-ssm")
MAMBA_SSM_INSTALL = "pip install mamba-ssm causal-conv1d --no-build-isolation (on a GPU machine)"


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception:
        return False


class _Adapter(DecodeLM):
    """Shared plumbing: config, dtype/device from the wrapped model, compulsory cost from the config."""

    continues_prefill = False  # both wrapped models prefill from an empty state only

    def _wrap(self, config: MambaConfig, embedding: torch.nn.Embedding):
        self.config = config
        # DecodeLM reads dtype and device off self.embed; the wrapped model's embedding is it.
        self.embed = embedding

    def state_bytes_per_seq(self, state_dtype: torch.dtype | None = None) -> int:
        return mamba_state_bytes_per_seq(self.config, self.dtype, state_dtype or self.default_state_dtype())

    def decode_cost(self, batch: int, state_dtype: torch.dtype | None = None) -> dict:
        return mamba_decode_cost(self.config, batch, self.weight_bytes(), self.dtype,
                                 state_dtype or self.default_state_dtype())

    def default_state_dtype(self) -> torch.dtype:
        return torch.float32


# ---- transformers ----
@dataclass
class HFState:
    batch: int
    state_dtype: torch.dtype
    cache: object = None  # transformers' cache, created by the prefill


class HFMambaLM(_Adapter):
    """transformers' MambaForCausalLM as a DecodeLM (eager only)."""

    supports_cuda_graph = False
    inner_net = "hf_transformers"

    def __init__(self, ours):
        super().__init__()
        from transformers import MambaConfig as HFConfig
        from transformers import MambaForCausalLM

        cfg_dict = {k: v for k, v in hf_config(ours.config).items() if k not in ("model_type", "architectures")}
        with torch.device("meta"):
            hf = MambaForCausalLM(HFConfig(**cfg_dict))
        # assign=True: the meta parameters become our model's tensors (same dtype and device), no copy.
        hf.load_state_dict(published_state_dict(ours, layout="hf"), strict=True, assign=True)
        if ours.config.tie_word_embeddings:
            # assign=True wraps each tensor in its own Parameter: tie them again (one weight, read once).
            hf.lm_head.weight = hf.backbone.embeddings.weight
        self.hf = hf.eval()
        self._wrap(ours.config, hf.backbone.embeddings)
        self.kernel_path = "mamba-ssm kernels" if _importable("mamba_ssm") else "PyTorch path"
        self.weights_source = ours.weights_source

    def allocate_state(self, batch: int, state_dtype: torch.dtype | None = None) -> HFState:
        if state_dtype not in (None, torch.float32):
            raise UserError(f"hf: transformers keeps the Mamba state in float32; drop --state-dtype {state_dtype}")
        return HFState(batch=batch, state_dtype=torch.float32)

    def reset_state(self, state: HFState) -> None:
        state.cache = None

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, state: HFState, last_only: bool = False) -> torch.Tensor:
        if state.cache is not None:
            raise UserError("hf: transformers' Mamba prefill starts from an empty state; call reset_state first")
        out = self.hf(input_ids=input_ids, use_cache=True)
        state.cache = out.cache_params
        return (out.logits[:, -1:] if last_only else out.logits).float()

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, state: HFState) -> torch.Tensor:
        if state.cache is None:
            return self.prefill(input_ids.unsqueeze(1), state)[:, -1]
        out = self.hf(input_ids=input_ids.unsqueeze(1), cache_params=state.cache, use_cache=True)
        state.cache = out.cache_params
        return out.logits[:, -1].float()


# ---- mamba-ssm ----
@dataclass
class MambaSSMState:
    batch: int
    state_dtype: torch.dtype
    params: object  # mamba_ssm.utils.generation.InferenceParams
    tensors: list = field(default_factory=list)


class MambaSSMLM(_Adapter):
    """mamba-ssm's MambaLMHeadModel as a DecodeLM, plus its own generate (`native_generate`)."""

    supports_cuda_graph = True
    inner_net = "mamba_ssm"

    def __init__(self, ours):
        super().__init__()
        from mamba_ssm.models.config_mamba import MambaConfig as SSMConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

        c = ours.config
        if c.rms_norm_eps != 1e-5:
            raise UserError(f"mamba-ssm's blocks use RMSNorm eps 1e-5; the config {c.name!r} has {c.rms_norm_eps}")
        ssm_cfg = {"layer": "Mamba1", "d_state": c.d_state, "d_conv": c.d_conv, "expand": c.expand,
                   "dt_rank": c.dt_rank, "conv_bias": c.conv_bias, "bias": c.proj_bias}
        sc = SSMConfig(d_model=c.d_model, n_layer=c.n_layer, vocab_size=c.vocab_size, ssm_cfg=ssm_cfg,
                       rms_norm=True, residual_in_fp32=True, fused_add_norm=True,
                       pad_vocab_size_multiple=c.pad_vocab_multiple, tie_embeddings=c.tie_word_embeddings)
        m = MambaLMHeadModel(sc, device=ours.device, dtype=ours.dtype)
        m.load_state_dict(published_state_dict(ours, layout="state-spaces"), strict=True)
        self.m = m.eval()
        self._wrap(c, m.backbone.embedding)
        self.weights_source = ours.weights_source
        self._warm_key = None

    def allocate_state(self, batch: int, state_dtype: torch.dtype | None = None) -> MambaSSMState:
        from mamba_ssm.utils.generation import InferenceParams

        if not isinstance(batch, int) or batch < 1:
            raise UserError(f"batch must be a positive integer, got {batch!r}")
        c, sd = self.config, state_dtype or self.default_state_dtype()
        kw = dict(device=self.device)
        # What allocate_inference_cache makes, except that the ssm state takes the state dtype and the
        # conv state keeps the weight dtype (causal-conv1d wants it equal to its input's).
        cache = {i: (torch.zeros(batch, c.d_inner, c.d_conv, dtype=self.dtype, **kw),  # [B, D, W]
                     torch.zeros(batch, c.d_inner, c.d_state, dtype=sd, **kw))  # [B, D, S]
                 for i in range(c.n_layer)}
        params = InferenceParams(max_seqlen=1 << 30, max_batch_size=batch, key_value_memory_dict=cache)
        return MambaSSMState(batch=batch, state_dtype=sd, params=params,
                             tensors=[t for pair in cache.values() for t in pair])

    @torch.no_grad()
    def reset_state(self, state: MambaSSMState) -> None:
        state.params.seqlen_offset = 0
        for t in state.tensors:
            t.zero_()

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, state: MambaSSMState, last_only: bool = False) -> torch.Tensor:
        if state.params.seqlen_offset > 0:
            raise UserError("mamba-ssm's prefill starts from an empty state; call reset_state first")
        # num_last_tokens=1: mamba-ssm's LM head on the last position only.
        logits = self.m(input_ids, inference_params=state.params, num_last_tokens=int(last_only)).logits
        state.params.seqlen_offset += input_ids.shape[1]
        return logits.float()

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, state: MambaSSMState) -> torch.Tensor:
        """One token through mamba-ssm's step path (a zero state is an empty context, so the step path is
        right for a first token too; this keeps the step graph-capturable before any prefill)."""
        state.params.seqlen_offset = max(state.params.seqlen_offset, 1)
        logits = self.m(input_ids.unsqueeze(1), inference_params=state.params).logits[:, -1]
        state.params.seqlen_offset += 1
        return logits.float()

    @torch.inference_mode()
    def native_generate(self, input_ids: torch.Tensor, genlen: int) -> dict:
        """mamba-ssm's own greedy generate(..., cg=True): genlen new tokens after the prompt input_ids [B, P].

        Untimed first call per (batch, length) captures its graphs (cold_start_s). Then a generate of one
        new token (prefill + first sample) gives prefill_s, a full generate gives e2e_s, and
        decode_s = e2e_s - prefill_s for the genlen - 1 decode steps (the split mamba-ssm cannot report)."""
        if genlen < 1:
            raise UserError(f"genlen must be >= 1, got {genlen}")
        P = input_ids.shape[1]
        kw = dict(cg=True, return_dict_in_generate=True, output_scores=False, top_k=1,
                  vocab_size=self.config.vocab_size)
        sync = torch.cuda.synchronize
        t0 = time.perf_counter()
        key = (input_ids.shape[0], P + genlen)
        if self._warm_key != key:
            self.m.generate(input_ids, max_length=P + genlen, **kw)
            self._warm_key = key
        sync()
        t1 = time.perf_counter()
        self.m.generate(input_ids, max_length=P + 1, **kw)
        sync()
        t2 = time.perf_counter()
        out = self.m.generate(input_ids, max_length=P + genlen, **kw)
        sync()
        t3 = time.perf_counter()
        prefill_s, e2e_s = t2 - t1, t3 - t2
        return {"tokens": out.sequences[:, P:], "prefill_s": prefill_s, "decode_s": max(e2e_s - prefill_s, 0.0),
                "decode_steps": genlen - 1, "e2e_s": e2e_s, "cold_start_s": t1 - t0,
                "state_dtype": str(self.dtype).replace("torch.", ""), "path": "mamba_ssm generate(cg=True)"}


def _require(prefix: str) -> None:
    if prefix == "hf":
        if importlib.util.find_spec("transformers") is None:
            raise MissingPackageError("transformers", "the hf:* baseline", "pip install transformers")
        return
    if importlib.util.find_spec("mamba_ssm") is None:
        raise MissingPackageError("mamba-ssm", "the mamba-ssm:* baseline", MAMBA_SSM_INSTALL)
    try:
        importlib.import_module("mamba_ssm")
    except Exception as e:
        raise UserError(f"mamba-ssm is installed but does not import ({type(e).__name__}: {str(e)[:120]}); "
                        f"reinstall it for this torch: {MAMBA_SSM_INSTALL}") from None


def load_baseline(prefix: str, name: str, inner_net: str | None = None, dtype="float16", device=None,
                  seed: int | None = 0) -> DecodeLM:
    """'hf' or 'mamba-ssm' + a Mamba config name, alias or checkpoint directory -> an adapter DecodeLM."""
    from ttt_decode.dtypes import parse_dtype, resolve_device
    from ttt_decode.models.factory import build

    if prefix not in PREFIXES:
        raise UserError(f"unknown baseline prefix {prefix!r}; choose one of {', '.join(p + ':' for p in PREFIXES)}")
    if inner_net is not None:
        raise UserError(f"{prefix}:{name} runs its own implementation; drop --inner_net {inner_net}")
    if not name:
        raise UserError(f"{prefix}: needs a model after the colon, e.g. {prefix}:mamba-1.4b")
    dtype, device = parse_dtype(dtype), resolve_device(device)
    if os.path.isdir(name):
        cfg = None
    else:
        cfg = get_config(name)
        if not isinstance(cfg, MambaConfig):
            raise UserError(f"{prefix}: baselines exist for Mamba models only (mamba-130m ... mamba-2.8b), "
                            f"not {name!r}")
    _require(prefix)
    if prefix == "mamba-ssm" and device.type != "cuda":
        raise UserError("the mamba-ssm:* baseline needs a CUDA GPU (its kernels are CUDA only); use hf:<name> on CPU")
    if cfg is None:
        from ttt_decode.models.mamba_checkpoint import load_mamba_checkpoint

        ours = load_mamba_checkpoint(name, dtype=dtype, device=device, inner_net="mamba_ref")
    else:
        ours = build(cfg, inner_net="mamba_ref", dtype=dtype, device=device, seed=seed)
    adapter = HFMambaLM(ours) if prefix == "hf" else MambaSSMLM(ours)
    # How to build our own model with the same weights (decode/check.py's fidelity reference).
    adapter.reference_spec = {"name": name, "seed": seed}
    return adapter
