"""`--wandb`: log a benchmark record (config + metrics) to Weights & Biases.

Offline by default (WANDB_MODE=offline unless the user set it), so it works without network; the
run files land in `<logdir>/wandb`, to sync later with `wandb sync`.
"""

from __future__ import annotations

import os

from ttt_decode.errors import MissingPackageError

CONFIG_FIELDS = ("model", "config_name", "inner_net", "ttt_path", "decode_path", "dtype", "state_dtype", "batch",
                 "promptlen", "genlen", "mode", "compile", "cuda_graph", "gpu", "git_commit", "torch", "triton",
                 "weights_source", "status")


def log_record(record: dict, project: str = "ttt-decode", logdir: str = ".") -> str:
    """Log one record as one wandb run; returns the run's directory."""
    try:
        import wandb
    except ImportError:
        raise MissingPackageError("wandb", "--wandb logging", "pip install 'ttt-decode[wandb]'") from None
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    config = {k: record.get(k) for k in CONFIG_FIELDS}
    metrics = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for k, v in (record.get("step_ms") or {}).items():
        metrics[f"step_ms/{k}"] = v
    name = f"{record.get('model')}-{record.get('inner_net') or 'default'}-B{record.get('batch')}"
    run = wandb.init(project=project, dir=logdir, config=config, name=name, reinit=True)
    run.log(metrics)
    run_dir = run.dir
    run.finish()
    return run_dir
