"""Every implementation the toolkit can run, in one table (as gpt-fast keeps its model configs in one dict).

An implementation is what `--inner_net` names for a model (the TTT inner loop, the Mamba step, the
Transformer's decode attention) or what `ttt-decode micro --kernels` times. Each entry says its model
family, which part of the model it implements, its form, whether it is the PyTorch reference, a Triton
kernel or torch.compile of the reference, and which implementation it is checked against. The model
builders, the sweep, `check`, the micro-benchmark and the tests all read this table; nothing else
lists implementation names.

    get("mlp_2_dual_triton")  ->  Implementation(family="ttt", part="ttt_mlp", form="dual", impl="triton",
                                                  reference="mlp_2_dual", ...)

A leaf module: it imports nothing of the project but its errors.
"""

from __future__ import annotations

from dataclasses import dataclass

from ttt_decode.errors import UserError

REFERENCE, TRITON, COMPILED = "reference", "triton", "compiled"
FAMILY_NAMES = {"ttt": "TTT", "mamba": "Mamba", "transformer": "Transformer"}


@dataclass(frozen=True)
class Implementation:
    name: str  # as given on the command line
    family: str  # the model kind it belongs to: "ttt", "mamba", "transformer"
    part: str  # what it computes: "ttt_linear" (M1), "ttt_mlp" (M2), "mamba_step", "attention"
    form: str  # TTT: "dual" or "primal"; the others: "step"
    impl: str  # REFERENCE (PyTorch, float64-capable), TRITON or COMPILED (torch.compile of the reference)
    reference: str  # the implementation it is checked against (itself for a reference)
    selectable: bool = True  # False: a micro-benchmark variant only, not a model's inner net

    @property
    def op_impl(self) -> str:
        """The ops packages' implementation switch: "naive" (the reference, also what COMPILED compiles)
        or "triton"."""
        return "triton" if self.impl == TRITON else "naive"

    @property
    def ttt_layer_type(self) -> str | None:
        """TTT: "linear" (M1) or "mlp" (M2), the checkpoint's `ttt_layer_type`; None otherwise."""
        return {"ttt_linear": "linear", "ttt_mlp": "mlp"}.get(self.part)


def _ttt() -> list[Implementation]:
    out = []
    for n, part in ((1, "ttt_linear"), (2, "ttt_mlp")):
        for form in ("dual", "primal"):
            base = f"mlp_{n}_{form}"
            out += [Implementation(base, "ttt", part, form, REFERENCE, base),
                    Implementation(f"{base}_triton", "ttt", part, form, TRITON, base),
                    Implementation(f"{base}_compiled", "ttt", part, form, COMPILED, base, selectable=False)]
    return out


IMPLEMENTATIONS: dict[str, Implementation] = {i.name: i for i in _ttt() + [
    Implementation("mamba_ref", "mamba", "mamba_step", "step", REFERENCE, "mamba_ref"),
    Implementation("mamba_triton", "mamba", "mamba_step", "step", TRITON, "mamba_ref"),
    # The micro-benchmark times the Mamba step alone under these names (its records keep them).
    Implementation("mamba_step_ref", "mamba", "mamba_step", "step", REFERENCE, "mamba_step_ref", selectable=False),
    Implementation("mamba_step_triton", "mamba", "mamba_step", "step", TRITON, "mamba_step_ref", selectable=False),
    Implementation("attn_ref", "transformer", "attention", "step", REFERENCE, "attn_ref"),
    Implementation("attn_triton", "transformer", "attention", "step", TRITON, "attn_ref"),
]}


def names(family: str | None = None, selectable: bool | None = True) -> list[str]:
    """Implementation names, of one family and/or only those a model can select (None: all)."""
    return [n for n, i in IMPLEMENTATIONS.items()
            if (family is None or i.family == family) and (selectable is None or i.selectable == selectable)]


def get(name: str, family: str | None = None) -> Implementation:
    """The implementation called name (of the given family, when given); a UserError listing the choices."""
    impl = IMPLEMENTATIONS.get(name)
    if impl is None or (family is not None and impl.family != family) or not impl.selectable:
        choices = ", ".join(names(family))
        where = f" for a {FAMILY_NAMES[family]} model" if family else ""
        raise UserError(f"unknown inner net {name!r}{where}; choose one of {choices}")
    return impl


def reference_of(name: str | None) -> str | None:
    """The implementation name's reference (mlp_2_dual_triton -> mlp_2_dual); None stays None."""
    return None if name is None else IMPLEMENTATIONS[name].reference if name in IMPLEMENTATIONS else name


def default(family: str, device_type: str, ttt_layer_type: str | None = None) -> str:
    """What a model runs when --inner_net is not given: the Triton kernels on CUDA for Mamba and the
    Transformer, the PyTorch reference elsewhere; TTT the reference dual form of its layer type."""
    if family == "ttt":
        return "mlp_1_dual" if ttt_layer_type == "linear" else "mlp_2_dual"
    triton = device_type == "cuda"
    return {"mamba": "mamba_triton" if triton else "mamba_ref",
            "transformer": "attn_triton" if triton else "attn_ref"}[family]
