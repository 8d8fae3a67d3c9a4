"""Reading one checkpoint weight file, shared by the TTT and Mamba checkpoint loaders."""

from __future__ import annotations

import os

import torch

from ttt_decode.errors import MissingPackageError, UserError


def load_weight_file(fp: str) -> dict[str, torch.Tensor]:
    """One weight file (.safetensors or a torch.save state dict) -> name -> tensor, on the CPU, with a
    one-line error naming the file for anything unreadable; torch.load runs with weights_only=True, so no
    pickled code runs."""
    if not os.access(fp, os.R_OK):
        raise UserError(f"cannot read {fp} (permission denied); check the file's permissions")
    if fp.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise MissingPackageError("safetensors", f"reading {os.path.basename(fp)}") from None
        try:
            return load_file(fp, device="cpu")
        except Exception as e:  # truncated or foreign file: say which one
            detail = " ".join(str(e).split())[:120]
            raise UserError(f"{fp} could not be read as safetensors ({type(e).__name__}: {detail}); "
                            "re-download or re-save the checkpoint") from None
    try:
        data = torch.load(fp, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{fp} could not be read with torch.load(weights_only=True) ({type(e).__name__}); it must "
                        "be a plain state dict of tensors") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                             for k, v in data.items()):
        raise UserError(f"{fp} must hold a flat state dict: tensor name -> tensor")
    return data
