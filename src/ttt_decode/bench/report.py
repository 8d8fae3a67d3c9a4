"""`ttt-decode report <logdir>... --out DIR`: a Markdown table and a throughput plot from bench records.

Rows are model + inner net (+ dtype / state dtype when they vary), columns batch sizes, cells decode
tokens/s (oom, timeout, killed and error cells marked). A second table gives the speed-up of every
row against a baseline row (`--baseline`, default the first row) as 1x. The plot shows decode
tokens/s against batch size (log2 axis) for every row, with that row's roofline (batch / time floor
of a step, from the bytes and FLOPs per step and the measured ceilings) dashed in the same colour, and
the knee: the batch size past which throughput grows less than 5% per doubling of the batch. Where two
neighbouring batches of a row are not exactly 2x apart, their gain is taken per doubling,
gain ** (1 / log2(b2 / b1)): 64 -> 256 at +8% is +3.9% per doubling, a knee at 64.

A cell recorded more than once (a rerun, `sweep --retry`, the same cell in two logdirs) counts once:
its newest record wins (the last one read; logdirs are read in the order given, each file in append
order) and the superseded records are reported as such, never as separate results. Unreadable (torn)
lines are skipped and counted.
"""

from __future__ import annotations

import math
import os
import statistics

from ttt_decode.bench.records import (
    RESULTS,
    prepare_logdir,
    read_records,
    record_cell,
    unreadable_note,
)
from ttt_decode.errors import MissingPackageError, UserError

# The knee: throughput grows less than this factor per doubling of the batch.
KNEE_GAIN = 1.05


def load_records(logdirs: list[str]) -> tuple[list[dict], list[str]]:
    """Every bench record of the logdirs in reading order, and a note per file with unreadable lines."""
    records, notes = [], []
    for d in logdirs:
        path = d if d.endswith(".jsonl") else os.path.join(d, RESULTS)
        if not os.path.isfile(path):
            raise UserError(f"no results at {path}; run `ttt-decode bench` or `ttt-decode sweep` with --logdir {d}")
        found, bad = read_records(path)
        records += [r for r in found if r.get("kind") == "bench"]
        if bad:
            notes.append(unreadable_note(path, bad))
    if not records:
        raise UserError("no benchmark records in " + ", ".join(logdirs))
    return records, notes


def latest_records(records: list[dict]) -> tuple[list[dict], dict[str, list[dict]]]:
    """The newest record of each cell (cells in order of first appearance), and {cell: its superseded records}."""
    by_cell: dict[str, list[dict]] = {}
    for r in records:
        by_cell.setdefault(record_cell(r), []).append(r)
    latest = [rs[-1] for rs in by_cell.values()]
    superseded = {cell: rs[:-1] for cell, rs in by_cell.items() if len(rs) > 1}
    return latest, superseded


def check_metric(records: list[dict], metric: str) -> None:
    """--metric must be a numeric field of at least one ok record; else the fields that are."""
    ok = [r for r in records if r.get("status") == "ok"]
    if any(_is_number(r.get(metric)) for r in ok):
        return
    numeric = sorted({k for r in ok for k, v in r.items() if _is_number(v)})
    raise UserError(f"--metric {metric!r} is not a number in any ok record; choose one of "
                    f"{', '.join(numeric) or '(none: no ok records)'}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _row_key(r: dict, vary: set[str]) -> str:
    parts = [str(r.get("model")), r.get("inner_net") or ""]
    for field in ("dtype", "state_dtype", "genlen", "compile"):
        if field in vary:
            parts.append(f"{field}={r.get(field)}")
    return " ".join(p for p in parts if p)


def build_table(records: list[dict], metric: str = "decode_tokens_per_s"):
    """{row: {batch: record}}, the batch list, and the fields that vary between records.

    Rows come from successful records; a failed cell (which knows only what was asked for, e.g. no
    inner net when the model's default was meant) joins the row of the same model whose resolved
    fields agree with the ones it does know."""
    fields = ("dtype", "state_dtype", "genlen", "compile")
    # A field is shown in row names only where one model appears with several values of it.
    vary = {f for f in fields for m in {r.get("model") for r in records}
            if len({str(r.get(f)) for r in records if r.get("model") == m and r.get(f) is not None}) > 1}
    rows: dict[str, dict[int, dict]] = {}
    ok = [r for r in records if r.get("status") == "ok" and metric in r]
    for r in ok:
        # One record per cell (latest_records); two cells on one (row, batch), differing in a field the row
        # names do not show (mode, prompt length), leave the later one read.
        rows.setdefault(_row_key(r, vary), {})[int(r["batch"])] = r
    for r in records:
        if r.get("status") == "ok":
            continue
        known = {f: r.get(f) for f in ("model", "inner_net") + fields if r.get(f) is not None}
        match = [k for k, cells in rows.items()
                 if all(str(next(iter(cells.values())).get(f)) == str(v) for f, v in known.items())]
        key = match[0] if len(match) == 1 else _row_key(r, vary)
        rows.setdefault(key, {}).setdefault(int(r["batch"]), r)
    batches = sorted({b for cells in rows.values() for b in cells})
    return rows, batches, vary


def _fmt(v: float) -> str:
    return f"{v / 1e3:.1f} k" if v >= 1e3 else f"{v:.0f}"


def _cell_text(r: dict | None, metric: str) -> str:
    if r is None:
        return ""
    if r.get("status") != "ok":
        return r["status"].upper()
    return _fmt(r[metric])


def gain_per_doubling(b0: int, v0: float, b1: int, v1: float) -> float:
    """The factor by which the metric grows per doubling of the batch between batches b0 < b1."""
    return (v1 / v0) ** (1 / math.log2(b1 / b0))


def knee(cells: dict[int, dict], metric: str) -> int | None:
    """The first batch past which the metric grows less than KNEE_GAIN per doubling (ok cells only), or None."""
    ok = sorted((b, r[metric]) for b, r in cells.items() if r.get("status") == "ok" and metric in r and b > 0)
    for (b0, v0), (b1, v1) in zip(ok, ok[1:]):
        if v0 > 0 and gain_per_doubling(b0, v0, b1, v1) < KNEE_GAIN:
            return b0
    return None


def superseded_note(superseded: dict[str, list[dict]]) -> str:
    """One line naming the cells recorded more than once ('' if none)."""
    if not superseded:
        return ""
    n = sum(len(rs) for rs in superseded.values())
    cells = [f"{rs[0].get('model')} {rs[0].get('inner_net') or ''} B={rs[0].get('batch')} ({len(rs) + 1} records)"
             for rs in list(superseded.values())[:5]]
    more = ", ..." if len(superseded) > 5 else ""
    return (f"{len(superseded)} cell(s) recorded more than once; the newest record of each is shown and {n} older "
            f"record(s) are superseded: {', '.join(' '.join(c.split()) for c in cells)}{more}")


def markdown(records: list[dict], baseline: str | None = None, metric: str = "decode_tokens_per_s",
             notes: list[str] = ()) -> str:
    """records: one per cell (latest_records); notes: lines added at the end (superseded, unreadable)."""
    rows, batches, vary = build_table(records, metric)
    names = list(rows)
    base = baseline if baseline is not None else names[0]
    if base not in rows:
        raise UserError(f"baseline row {base!r} not found; rows are: {'; '.join(names)}")
    gpus = sorted({r.get("gpu", "?") for r in records})
    head = "| model | " + " | ".join(f"B={b}" for b in batches) + " | knee |"
    sep = "|---" * (len(batches) + 2) + "|"
    lines = [f"Decode throughput, tokens/s ({metric}; {', '.join(gpus)}). OOM = out of memory "
             "(measured, or estimated over the GPU's memory), TIMEOUT / KILLED / ERROR = the cell failed. knee = "
             f"the batch past which throughput grows less than {(KNEE_GAIN - 1) * 100:.0f}% per doubling of the batch "
             "(empty: it grows faster up to the largest batch).", "",
             head, sep]
    for name in names:
        k = knee(rows[name], metric)
        lines.append(f"| {name} | " + " | ".join(_cell_text(rows[name].get(b), metric) for b in batches)
                     + f" | {k or ''} |")
    lines += ["", f"Speed-up against **{base}** (= 1x):", "", head.replace(" knee |", ""), sep[:-4]]
    for name in names:
        cells = []
        for b in batches:
            r, rb = rows[name].get(b), rows[base].get(b)
            ok = r and rb and r.get("status") == "ok" and rb.get("status") == "ok"
            cells.append(f"{r[metric] / rb[metric]:.2f}x" if ok else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Share of the roofline (time floor of a step / measured step time):", "", head.replace(" knee |", ""),
              sep[:-4]]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(
            f"{rows[name][b]['pct_of_roofline']:.0f}%" if b in rows[name] and rows[name][b].get("status") == "ok"
            and "pct_of_roofline" in rows[name][b] else "" for b in batches) + " |")
    notes = [n for n in notes if n]
    if notes:
        lines += [""] + [f"Note: {n}." for n in notes]
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: str, metric: str = "decode_tokens_per_s", title: str | None = None) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingPackageError("matplotlib", "the report's plot", "pip install 'ttt-decode[plot]'") from None
    rows, batches, _ = build_table(records, metric)
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, cells) in enumerate(rows.items()):
        color = f"C{i % 10}"
        ok = sorted((b, r) for b, r in cells.items() if r.get("status") == "ok" and metric in r)
        if ok:
            ax.plot([b for b, _ in ok], [r[metric] for _, r in ok], "o-", color=color, label=name)
            roof = [(b, b / (r["floor_ms"] / 1e3)) for b, r in ok if r.get("floor_ms")]
            if roof:
                ax.plot([b for b, _ in roof], [v for _, v in roof], "--", color=color, alpha=0.6)
            k = knee(cells, metric)
            if k is not None:
                ax.plot([k], [cells[k][metric]], "s", color=color, markersize=10, markerfacecolor="none")
        failed = [b for b, r in cells.items() if r.get("status") != "ok"]
        if failed and ok:
            ax.plot(failed, [ok[-1][1][metric]] * len(failed), "x", color=color, markersize=9)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("decode tokens/s")
    gpus = ", ".join(sorted({r.get("gpu", "?") for r in records}))
    ax.set_title(title or f"Decode throughput on {gpus}\n(dashed: roofline of each row; square: knee, past it "
                          f"< {(KNEE_GAIN - 1) * 100:.0f}% more per doubling; x: OOM/failed)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summary_stats(records: list[dict], superseded: dict[str, list[dict]] | None = None) -> str:
    """records: one per cell (latest_records)."""
    ok = [r for r in records if r.get("status") == "ok"]
    n_old = sum(len(rs) for rs in (superseded or {}).values())
    return f"{len(records)} cells, {len(ok)} ok, {len(records) - len(ok)} failed" + \
           (f" ({n_old} superseded record(s) of re-run cells not counted)" if n_old else "") + \
           f"; median step {statistics.median([r['step_ms']['mean'] for r in ok if 'step_ms' in r] or [0]):.3f} ms"


def add_arguments(p):
    p.add_argument("logdirs", nargs="+", help="logdirs (or results.jsonl files) to read")
    p.add_argument("--out", required=True, help="directory for report.md and throughput.png")
    p.add_argument("--baseline", default=None, help="row used as 1x in the speed-up table (default: the first row)")
    p.add_argument("--metric", default="decode_tokens_per_s", help="record field shown (default decode_tokens_per_s)")


def main(args) -> int:
    prepare_logdir(args.out, flag="--out", files=("report.md", "throughput.png"))
    records, notes = load_records(args.logdirs)
    records, superseded = latest_records(records)
    check_metric(records, args.metric)
    md = markdown(records, args.baseline, args.metric, notes=[superseded_note(superseded)] + notes)
    with open(os.path.join(args.out, "report.md"), "w") as fh:
        fh.write(md)
    png = plot(records, os.path.join(args.out, "throughput.png"), args.metric)
    print(md)
    print(f"{summary_stats(records, superseded)}\nwrote {os.path.join(args.out, 'report.md')} and {png}")
    return 0
