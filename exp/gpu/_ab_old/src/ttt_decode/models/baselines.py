"""Outside implementations behind model-name prefixes, as DecodeLMs in the same harness.

    hf:<name>         transformers' MambaForCausalLM for a Mamba name, LlamaForCausalLM for a Transformer
                      name (llama-*): the implementations most users reach for
    mamba-ssm:<name>  the mamba-ssm package's MambaLMHeadModel, with its own CUDA-graph generate

<name> is a config name or hub alias (random weights: exactly the weights of our model built with
the same seed, converted, so logits are comparable) or a local Mamba checkpoint directory. Each prefix
is refused with one line when its package is missing.

hf: (Mamba) the adapter's state is transformers' cache object, filled by the prefill; prefill and step go
through MambaForCausalLM.forward with that cache. Its cache is created by the forward itself, so the
step cannot be captured in a CUDA graph before the prefill: `supports_cuda_graph = False`, and the
engine runs it eagerly. transformers keeps the recurrent state in float32 whatever the weights are.
transformers uses mamba-ssm's and causal-conv1d's kernels when they import, else its PyTorch path;
`kernel_path` says which.

hf: (Llama) LlamaForCausalLM holds our TransformerLM's tensors themselves (transformer.hf_llama_state_dict:
views, no copy). The state is transformers' StaticCache, allocated up front for the capacity (max_seq_len)
in the weight dtype (StaticCache writes keys and values in the dtype they come in: no other state dtype),
and the position pos [1] on the device. The prefill fills the cache from an empty state; the step feeds
one token at position pos and advances it in place (the cache's own per-layer counters advance with it)
and reads nothing back to the host, so the engine captures it in a CUDA graph like our models' steps.
transformers picks the attention (`kernel_path`: sdpa unless configured otherwise).

mamba-ssm: the DecodeLM contract runs through mamba-ssm's own step path (InferenceParams holding the
per-layer (conv_state [B, D, W], ssm_state [B, D, S]) that `allocate_inference_cache` would make, the
ssm state in the chosen state dtype); that step is graph-capturable. `native_generate` runs
mamba-ssm's own `generate(..., cg=True)` (its CUDA graphs; its state dtype is the weight dtype).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import time
from dataclasses import dataclass, field

import torch

from ttt_decode.configs import CONFIGS, MambaConfig, TransformerConfig, get_config
from ttt_decode.errors import MissingPackageError, UserError
from ttt_decode.models.common import DecodeLM, check_ids
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

    continues_prefill = False  # the wrapped models prefill from an empty state only (hf:llama continues)
    state_is_tensors = False  # their caches are the libraries' objects

    def _wrap(self, config: MambaConfig | TransformerConfig, embedding: torch.nn.Embedding):
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
        # The cache argument is `cache` in newer transformers, `cache_params` before (deprecated, to be
        # removed in 5.40): the name the installed forward takes.
        params = inspect.signature(hf.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "cache_params"

    @staticmethod
    def _cache_of(out):
        return out.cache if getattr(out, "cache", None) is not None else out.cache_params

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
        state.cache = self._cache_of(out)
        return (out.logits[:, -1:] if last_only else out.logits).float()

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, state: HFState) -> torch.Tensor:
        if state.cache is None:
            return self.prefill(input_ids.unsqueeze(1), state)[:, -1]
        out = self.hf(input_ids=input_ids.unsqueeze(1), use_cache=True, **{self._cache_arg: state.cache})
        state.cache = self._cache_of(out)
        return out.logits[:, -1].float()


# ---- transformers: Llama ----
@dataclass
class HFLlamaState:
    """transformers' StaticCache (every layer's keys and values [B, H, capacity, f], allocated up front) and
    pos [1] int64 on the device: the tokens in the cache (the next token's position)."""

    cache: object
    pos: torch.Tensor
    batch: int
    capacity: int
    state_dtype: torch.dtype

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.cache.layers for t in (layer.keys, layer.values))


class HFLlamaLM(_Adapter):
    """transformers' LlamaForCausalLM with a StaticCache as a DecodeLM (graph-capturable step)."""

    supports_cuda_graph = True
    uses_kv_cache = True
    inner_net = "hf_transformers"
    # A StaticCache is written at the positions given, so a prompt can go in chunks (cache_position
    # from the state's position), as our Transformer's.
    continues_prefill = True

    def __init__(self, ours):
        super().__init__()
        import transformers
        from transformers import LlamaConfig, LlamaForCausalLM

        from ttt_decode.models.transformer import hf_llama_config_kwargs, hf_llama_state_dict

        if not hasattr(transformers.StaticCache, "early_initialization"):
            raise UserError(f"hf:{ours.config.name} needs transformers' StaticCache.early_initialization, which "
                            f"transformers {transformers.__version__} lacks: pip install -U transformers")
        with torch.device("meta"):
            hf = LlamaForCausalLM(LlamaConfig(**hf_llama_config_kwargs(ours.config)))
        # assign=True: the meta parameters become our model's tensors (same dtype and device), no copy.
        hf.load_state_dict(hf_llama_state_dict(ours), strict=True, assign=True)
        hf.lm_head.weight = hf.model.embed_tokens.weight  # tied again: one weight, read once
        # The rotary frequencies are a buffer outside the state dict: made again on the real device.
        hf.model.rotary_emb = type(hf.model.rotary_emb)(hf.config).to(ours.device)
        self.hf = hf.eval()
        self._wrap(ours.config, hf.model.embed_tokens)
        # Our model answers the cost questions from the same config; kept outside the module tree, since
        # its parameters are hf's (the same storage) and would be counted twice.
        self._ours = (ours,)
        self.kernel_path = f"{hf.config._attn_implementation} attention"
        self.weights_source = ours.weights_source
        # Argument names differ across transformers versions: the cache is `cache` (5.x) or
        # `past_key_values`; versions with `cache_position` want the write position given.
        params = inspect.signature(hf.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._cache_position = "cache_position" in params
        self._logits_to_keep = "logits_to_keep" in params

    def default_state_dtype(self) -> torch.dtype:
        return self.dtype

    def allocate_state(self, batch: int, state_dtype: torch.dtype | None = None,
                       max_seq_len: int | None = None) -> HFLlamaState:
        from transformers import StaticCache

        if not isinstance(batch, int) or batch < 1:
            raise UserError(f"batch must be a positive integer, got {batch!r}")
        if state_dtype not in (None, self.dtype):
            name, weights = (str(d).replace("torch.", "") for d in (state_dtype, self.dtype))
            raise UserError(f"hf: transformers' StaticCache keeps the KV cache in the weight dtype {weights}; "
                            f"drop --state-dtype {name} or pass --dtype {name}")
        c, T = self.config, max_seq_len or self.config.max_seq_len
        cache = StaticCache(config=self.hf.config, max_cache_len=T)
        cache.early_initialization(batch, c.num_heads, c.head_dim, self.dtype, self.device)
        return HFLlamaState(cache, torch.zeros(1, dtype=torch.int64, device=self.device), batch, T, self.dtype)

    @torch.no_grad()
    def reset_state(self, state: HFLlamaState) -> None:
        state.pos.zero_()
        state.cache.reset()  # zeroes keys, values and the per-layer counters, in place

    def state_bytes_per_seq(self, state_dtype: torch.dtype | None = None, context: int | None = None) -> int:
        return self._ours[0].state_bytes_per_seq(state_dtype, context=context)

    def decode_cost(self, batch: int, state_dtype: torch.dtype | None = None, context: int | None = None) -> dict:
        return self._ours[0].decode_cost(batch, state_dtype, context=context)

    def _forward(self, input_ids: torch.Tensor, state: HFLlamaState, positions: torch.Tensor, **kw):
        kw.update({self._cache_arg: state.cache, "use_cache": True, "position_ids": positions.view(1, -1)})
        if self._cache_position:
            kw["cache_position"] = positions
        return self.hf(input_ids=input_ids, **kw).logits

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Full-sequence logits [B, N, V] float32, no cache."""
        return self.hf(input_ids=input_ids, use_cache=False).logits.float()

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, state: HFLlamaState, last_only: bool = False) -> torch.Tensor:
        check_ids(input_ids, 2, state.batch)
        N = input_ids.shape[1]
        start = int(state.pos.item())  # host read: prefill is outside the graph-captured step
        if start + N > state.capacity:
            raise UserError(f"{start} + {N} tokens exceed the KV cache capacity {state.capacity}; "
                            "allocate the state with a larger max_seq_len")
        kw = {"logits_to_keep": 1} if last_only and self._logits_to_keep else {}
        logits = self._forward(input_ids, state, torch.arange(start, start + N, device=input_ids.device), **kw)
        state.pos.fill_(start + N)
        return (logits[:, -1:] if last_only else logits).float()

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, state: HFLlamaState) -> torch.Tensor:
        """input_ids [B] -> logits [B, V] float32 at position pos, which it advances. No host read: one CUDA
        graph serves every position. The caller keeps pos below the capacity (DecodeSession does)."""
        logits = self._forward(input_ids.unsqueeze(1), state, state.pos)[:, -1]
        state.pos.add_(1)
        return logits.float()


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
    """'hf' + a Mamba or Transformer config name (or a Mamba checkpoint directory), or 'mamba-ssm' + a Mamba
    config name, alias or checkpoint directory -> an adapter DecodeLM."""
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
        llamas = ", ".join(n for n, c in CONFIGS.items() if isinstance(c, TransformerConfig))
        if prefix == "hf" and not isinstance(cfg, (MambaConfig, TransformerConfig)):
            raise UserError(f"hf: baselines exist for Mamba models (mamba-130m ... mamba-2.8b) and Transformers "
                            f"({llamas}), not {name!r}")
        if prefix != "hf" and not isinstance(cfg, MambaConfig):
            raise UserError(f"{prefix}: baselines exist for Mamba models only (mamba-130m ... mamba-2.8b), "
                            f"not {name!r}")
    _require(prefix)
    if prefix == "mamba-ssm" and device.type != "cuda":
        raise UserError("the mamba-ssm:* baseline needs a CUDA GPU (its kernels are CUDA only); use hf:<name> on CPU")
    if cfg is None:
        from ttt_decode.models.mamba_checkpoint import load_mamba_checkpoint

        ours = load_mamba_checkpoint(name, dtype=dtype, device=device, inner_net="mamba_ref")
    else:
        # Our model with the weights: its PyTorch path (the adapter only takes its tensors).
        ref_net = "attn_ref" if isinstance(cfg, TransformerConfig) else "mamba_ref"
        ours = build(cfg, inner_net=ref_net, dtype=dtype, device=device, seed=seed)
    if prefix == "mamba-ssm":
        adapter = MambaSSMLM(ours)
    else:
        adapter = HFLlamaLM(ours) if isinstance(cfg, TransformerConfig) else HFMambaLM(ours)
    # How to build our own model with the same weights (decode/check.py's fidelity reference).
    adapter.reference_spec = {"name": name, "seed": seed, "inner_net": ours.inner_net}
    return adapter
