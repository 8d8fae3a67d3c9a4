"""`ttt-decode report <logdir>... --out DIR`: Markdown tables and plots from bench records.

Throughput. Rows are model + inner net (+ dtype / state dtype / compile where one model appears with
several values of it), columns batch sizes, cells decode tokens/s (oom, timeout, killed and error
cells marked). A second table gives the speed-up of every row against a baseline row (`--baseline`,
default the first row) as 1x, a third each cell's share of its roofline. `throughput.png` shows
decode tokens/s against batch size (log2 axis) for every row, with that row's roofline (batch / time
floor of a step, from the bytes and FLOPs per step and the measured ceilings) dashed in the same
colour, and the knee: the batch size past which throughput grows less than 5% per doubling of the
batch. Where two neighbouring batches of a row are not exactly 2x apart, their gain is taken per
doubling, gain ** (1 / log2(b2 / b1)): 64 -> 256 at +8% is +3.9% per doubling, a knee at 64.

Several prompt lengths. When the records hold more than one `promptlen`, the three throughput tables
(and the knee) are written once per prompt length, under a heading that names it, so no table mixes
contexts; `throughput.png` shows the main prompt length (the most common one among the ok cells, the
shortest on a tie) and says so in its title. Cost against context gets its own table and plot: for
every (row, batch) measured at two or more prompt lengths, "Step time against context" gives the
median decode step (`step_ms["median"]`, ms; one step at batch B = one generated token for each of
the B sequences) at each prompt length, and "growth" = the step at the longest measured context /
at the shortest; `context.png` draws the same against context length (log2 axis), one line per
(row, batch), failed cells as an x at the top of the plot. Flat for TTT and Mamba; a KV-cache
Transformer's step grows with the cache.

Several generation lengths. `genlen` does not split rows: cells that differ only in genlen fill one
slot of a table, never two. The figure shown is the ok cell at the main genlen (the most common one
among the ok cells, the shortest on a tie), else the ok cell with the longest genlen; a figure from a
genlen other than the main one says so in its cell ("(genlen 2048)"), and the captions name the main
genlen. Cells with genlen >= 1024 are listed in "Constant cost over the generation": the mean step of
the first and the last quarter of the generation (`step_ms_early`, `step_ms_late`), their
difference and whether it is within 1%, and how many rows have every such cell within 1%.

A cell recorded more than once (a rerun, `sweep --retry`, the same cell in two logdirs) counts once:
its newest record wins (the last one read; logdirs are read in the order given, each file in append
order) and the superseded records are reported as such, never as separate results. Unreadable (torn)
lines are skipped and counted.
"""

from __future__ import annotations

import math
import os
import statistics
from collections import Counter

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
# Cells generating at least this many tokens go into the constant-cost table ...
LONG_GENLEN = 1024
# ... where the late quarter's mean step within this fraction of the early quarter's counts as constant.
CONSTANT_TOL = 0.01
# Fields added to a row's name where one model appears with several values of them.
ROW_FIELDS = ("dtype", "state_dtype", "compile")
OUTPUTS = ("report.md", "throughput.png", "context.png")


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


def _int(v) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def main_value(records: list[dict], field: str) -> int | None:
    """The most common value of an integer field among the ok records (all records if no ok record has
    it), the smallest on a tie; None if no record has it."""
    ok = [r for r in records if r.get("status") == "ok"]
    counts = Counter(v for v in (_int(r.get(field)) for r in ok) if v is not None)
    if not counts:
        counts = Counter(v for v in (_int(r.get(field)) for r in records) if v is not None)
    if not counts:
        return None
    return min(counts, key=lambda v: (-counts[v], v))


class Layout:
    """How the records map onto tables: each record's row name, and the main prompt and generation
    lengths (a record that does not say its length, e.g. an old failure record, counts as the main one)."""

    def __init__(self, records: list[dict]):
        self.records = records
        # A field is shown in row names only where one model appears with several values of it.
        self.vary = {f for f in ROW_FIELDS for m in {r.get("model") for r in records}
                     if len({str(r.get(f)) for r in records if r.get("model") == m and r.get(f) is not None}) > 1}
        self.promptlen = main_value(records, "promptlen")
        self.genlen = main_value(records, "genlen")
        self.promptlens = sorted({self.prompt_of(r) for r in records} - {None})
        self.genlens = sorted({self.gen_of(r) for r in records} - {None})
        self.row: dict[int, str] = {}
        ok = [r for r in records if r.get("status") == "ok"]
        first: dict[str, dict] = {}
        for r in ok:
            key = self._row_key(r)
            self.row[id(r)] = key
            first.setdefault(key, r)
        for r in records:
            if r.get("status") == "ok":
                continue
            # A failed cell knows only what was asked for (e.g. no inner net when the model's default was
            # meant): it joins the row of the same model whose resolved fields agree with the ones it knows.
            known = {f: r.get(f) for f in ("model", "inner_net") + ROW_FIELDS if r.get(f) is not None}
            match = [k for k, f0 in first.items() if all(str(f0.get(f)) == str(v) for f, v in known.items())]
            self.row[id(r)] = match[0] if len(match) == 1 else self._row_key(r)
        self.names = list(dict.fromkeys(self.row[id(r)] for r in ok + records))

    def _row_key(self, r: dict) -> str:
        parts = [str(r.get("model")), r.get("inner_net") or ""]
        parts += [f"{f}={r.get(f)}" for f in ROW_FIELDS if f in self.vary]
        return " ".join(p for p in parts if p)

    def prompt_of(self, r: dict) -> int | None:
        v = _int(r.get("promptlen"))
        return self.promptlen if v is None else v

    def gen_of(self, r: dict) -> int | None:
        v = _int(r.get("genlen"))
        return self.genlen if v is None else v

    def choose(self, cands: list[dict], has) -> dict:
        """The record shown for one table slot: an ok one with the figure (`has`) first, then the main
        genlen, then the longest genlen, then the one read last."""
        def rank(ir):
            i, r = ir
            g = self.gen_of(r) or 0
            return (r.get("status") == "ok" and has(r), g == self.genlen, g, i)
        return max(enumerate(cands), key=rank)[1]

    def genlen_tag(self, r: dict) -> str:
        g = self.gen_of(r)
        return f" (genlen {g})" if g is not None and g != self.genlen else ""

    def table(self, has, promptlen: int | None = None) -> tuple[dict[str, dict[int, dict]], list[int]]:
        """{row: {batch: record}} and the batch list, of the cells at one prompt length (None: the main
        one); one record per slot (`choose`), rows in the order of `names`."""
        promptlen = self.promptlen if promptlen is None else promptlen
        slots: dict[str, dict[int, list[dict]]] = {}
        for r in self.records:
            b = _int(r.get("batch"))
            if b is None or self.prompt_of(r) != promptlen or (r.get("status") == "ok" and not has(r)):
                continue
            slots.setdefault(self.row[id(r)], {}).setdefault(b, []).append(r)
        rows = {n: {b: self.choose(c, has) for b, c in sorted(slots[n].items())} for n in self.names if n in slots}
        return rows, sorted({b for cells in rows.values() for b in cells})

    def by_context(self, has) -> dict[tuple[str, int], dict[int, dict]]:
        """{(row, batch): {promptlen: record}} for every (row, batch) with cells at two or more prompt lengths."""
        slots: dict[tuple[str, int], dict[int, list[dict]]] = {}
        for r in self.records:
            b, p = _int(r.get("batch")), self.prompt_of(r)
            if b is None or p is None or (r.get("status") == "ok" and not has(r)):
                continue
            slots.setdefault((self.row[id(r)], b), {}).setdefault(p, []).append(r)
        order = {n: i for i, n in enumerate(self.names)}
        return {k: {p: self.choose(c, has) for p, c in sorted(v.items())}
                for k, v in sorted(slots.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])) if len(v) > 1}


def build_table(records: list[dict], metric: str = "decode_tokens_per_s", promptlen: int | None = None):
    """{row: {batch: record}}, the batch list, and the fields that vary between records, for the cells
    at one prompt length (None: the main one). See Layout."""
    lay = Layout(records)
    rows, batches = lay.table(lambda r: metric in r, promptlen)
    return rows, batches, lay.vary


def _fmt(v: float) -> str:
    return f"{v / 1e3:.1f} k" if v >= 1e3 else f"{v:.0f}"


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 1 else f"{v:.2f}"


def _ctx(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def _cell_text(r: dict | None, metric: str, lay: Layout | None = None) -> str:
    if r is None:
        return ""
    tag = lay.genlen_tag(r) if lay else ""
    if r.get("status") != "ok":
        return str(r.get("status")).upper() + tag
    return _fmt(r[metric]) + tag


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


def step_median(r: dict) -> float | None:
    """The median decode step in ms (the mean where a record has no median: a model's own generate loop
    is timed as a whole)."""
    s = r.get("step_ms")
    if not isinstance(s, dict):
        return None
    v = s.get("median", s.get("mean"))
    return v if _is_number(v) else None


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


def _lengths_text(lay: Layout, promptlen: int | None) -> str:
    parts = [f"prompt {promptlen}"] if promptlen is not None else []
    if lay.genlen is not None:
        parts.append(f"genlen {lay.genlen}" + (" unless the cell says otherwise" if len(lay.genlens) > 1 else ""))
    return ", ".join(parts)


def _throughput_block(lay: Layout, table, promptlen: int | None, base: str, metric: str,
                      gpus: list[str]) -> list[str]:
    """The throughput, speed-up and roofline tables of the cells at one prompt length (table: Layout.table's)."""
    rows, batches = table
    names = list(rows)
    head = "| model | " + " | ".join(f"B={b}" for b in batches) + " | knee |"
    sep = "|---" * (len(batches) + 2) + "|"
    lengths = _lengths_text(lay, promptlen)
    lines = [f"Decode throughput, tokens/s ({metric}; {', '.join(gpus)}{'; ' + lengths if lengths else ''}). "
             "OOM = out of memory (measured, or estimated over the GPU's memory), TIMEOUT / KILLED / ERROR = the "
             f"cell failed. knee = the batch past which throughput grows less than {(KNEE_GAIN - 1) * 100:.0f}% per "
             "doubling of the batch (empty: it grows faster up to the largest batch).", "", head, sep]
    for name in names:
        k = knee(rows[name], metric)
        lines.append(f"| {name} | " + " | ".join(_cell_text(rows[name].get(b), metric, lay) for b in batches)
                     + f" | {k or ''} |")
    if base in rows:
        lines += ["", f"Speed-up against **{base}** (= 1x):", "", head.replace(" knee |", ""), sep[:-4]]
        for name in names:
            cells = []
            for b in batches:
                r, rb = rows[name].get(b), rows[base].get(b)
                ok = r and rb and r.get("status") == "ok" and rb.get("status") == "ok"
                cells.append(f"{r[metric] / rb[metric]:.2f}x{lay.genlen_tag(r)}" if ok else "")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    else:
        lines += ["", f"Speed-up against **{base}**: no cells of that row at prompt {promptlen}."]
    lines += ["", "Share of the roofline (time floor of a step / measured step time):", "", head.replace(" knee |", ""),
              sep[:-4]]
    for name in names:
        cells = []
        for b in batches:
            r = rows[name].get(b)
            ok = r is not None and r.get("status") == "ok" and "pct_of_roofline" in r
            cells.append(f"{r['pct_of_roofline']:.0f}%{lay.genlen_tag(r)}" if ok else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def context_lines(lay: Layout) -> list[str]:
    """The "Step time against context" table ([] when no (row, batch) was measured at two prompt lengths)."""
    series = lay.by_context(lambda r: step_median(r) is not None)
    if not series:
        return []
    ctxs = sorted({p for cells in series.values() for p in cells})
    genlen = (f" Figures from genlen {lay.genlen} unless the cell says otherwise." if len(lay.genlens) > 1 else
              f" genlen {lay.genlen}." if lay.genlen is not None else "")
    lines = ["Step time against context (ms per step, batch B): the median decode step (step_ms median); one step "
             "at batch B generates one token for each of the B sequences. Context = the prompt length the generation "
             "starts from; growth = the step at the longest measured context / at the shortest. OOM and other failed "
             f"cells are marked.{genlen}", "",
             "| model | batch | " + " | ".join(f"ctx {_ctx(p)}" for p in ctxs) + " | growth |",
             "|---" * (len(ctxs) + 3) + "|"]
    for (name, b), cells in series.items():
        texts = []
        for p in ctxs:
            r = cells.get(p)
            if r is None:
                texts.append("")
            elif r.get("status") != "ok":
                texts.append(str(r.get("status")).upper() + lay.genlen_tag(r))
            else:
                texts.append(_ms(step_median(r)) + lay.genlen_tag(r))
        ok = [(p, step_median(r)) for p, r in sorted(cells.items()) if r.get("status") == "ok"]
        growth = f"{ok[-1][1] / ok[0][1]:.2f}x" if len(ok) > 1 and ok[0][1] > 0 else ""
        lines.append(f"| {name} | {b} | " + " | ".join(texts) + f" | {growth} |")
    return lines


def constant_cost_lines(lay: Layout) -> list[str]:
    """The "Constant cost over the generation" table of the cells with genlen >= LONG_GENLEN ([] if none)."""
    long = [r for r in lay.records if (lay.gen_of(r) or 0) >= LONG_GENLEN and _int(r.get("batch")) is not None]
    if not long:
        return []
    order = {n: i for i, n in enumerate(lay.names)}
    long.sort(key=lambda r: (order[lay.row[id(r)]], int(r["batch"]), lay.prompt_of(r) or 0, lay.gen_of(r)))
    tol = CONSTANT_TOL * 100
    lines = [f"Constant cost over the generation (cells with genlen >= {LONG_GENLEN}): the mean step (ms) of the "
             "first and of the last quarter of the generation (step_ms_early, step_ms_late), the difference late / "
             f"early - 1, and whether it is within {tol:.0f}%.", "",
             f"| model | batch | prompt | genlen | early ms | late ms | difference | within {tol:.0f}% |",
             "|---|---|---|---|---|---|---|---|"]
    verdict: dict[str, list[bool]] = {}
    for r in long:
        name = lay.row[id(r)]
        head = f"| {name} | {r['batch']} | {lay.prompt_of(r)} | {lay.gen_of(r)} |"
        early, late = r.get("step_ms_early"), r.get("step_ms_late")
        if r.get("status") != "ok":
            lines.append(f"{head} {str(r.get('status')).upper()} | | | |")
        elif not (_is_number(early) and _is_number(late)) or early <= 0:
            lines.append(f"{head} | | | n/a |")
        else:
            d = late / early - 1
            within = abs(d) <= CONSTANT_TOL
            verdict.setdefault(name, []).append(within)
            lines.append(f"{head} {_ms(early)} | {_ms(late)} | {d * 100:+.2f}% | {'yes' if within else 'no'} |")
    constant = [n for n, v in verdict.items() if all(v)]
    lines += ["", f"Rows with every measured cell within {tol:.0f}%: {len(constant)} of {len(verdict)}"
              + (f" ({', '.join(constant)})" if constant else "") + "."]
    return lines


def markdown(records: list[dict], baseline: str | None = None, metric: str = "decode_tokens_per_s",
             notes: list[str] = ()) -> str:
    """records: one per cell (latest_records); notes: lines added at the end (superseded, unreadable)."""
    lay = Layout(records)
    tables = {p: lay.table(lambda r: metric in r, p) for p in lay.promptlens or [None]}
    names = [n for n in lay.names if any(n in rows for rows, _ in tables.values())]
    base = baseline if baseline is not None else (names or lay.names)[0]
    if base not in names:
        raise UserError(f"baseline row {base!r} not found; rows are: {'; '.join(names)}")
    gpus = sorted({r.get("gpu", "?") for r in records})
    lines = []
    if len(lay.promptlens) > 1:
        lines += [f"Prompt lengths {', '.join(map(str, lay.promptlens))}: the throughput tables are given for each "
                  "prompt length apart; the step time against context follows them.", ""]
        for p in lay.promptlens:
            lines += [f"## Prompt length {p}", ""] + _throughput_block(lay, tables[p], p, base, metric, gpus) + [""]
        lines.pop()
    else:
        lines += _throughput_block(lay, tables[lay.promptlen if lay.promptlens else None], lay.promptlen, base,
                                   metric, gpus)
    for section in (context_lines(lay), constant_cost_lines(lay)):
        if section:
            lines += [""] + section
    notes = [n for n in notes if n]
    if notes:
        lines += [""] + [f"Note: {n}." for n in notes]
    return "\n".join(lines) + "\n"


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingPackageError("matplotlib", "the report's plot", "pip install 'ttt-decode[plot]'") from None
    return plt


def _save(fig, plt, path: str) -> str:
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot(records: list[dict], path: str, metric: str = "decode_tokens_per_s", title: str | None = None) -> str:
    """throughput.png: the metric against batch at the main prompt length."""
    plt = _pyplot()
    lay = Layout(records)
    rows, _ = lay.table(lambda r: metric in r)
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
    at = f", prompt {lay.promptlen}" if len(lay.promptlens) > 1 else ""
    ax.set_title(title or f"Decode throughput on {gpus}{at}\n(dashed: roofline of each row; square: knee, past it "
                          f"< {(KNEE_GAIN - 1) * 100:.0f}% more per doubling; x: OOM/failed)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def plot_context(records: list[dict], path: str) -> str | None:
    """context.png: the median step against context length, one line per (row, batch) measured at two or
    more prompt lengths; None (nothing written) when there is none."""
    lay = Layout(records)
    series = lay.by_context(lambda r: step_median(r) is not None)
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    top = ax.get_xaxis_transform()  # x in data, y in axes coordinates: failed cells at the top
    for i, ((name, b), cells) in enumerate(series.items()):
        color = f"C{i % 10}"
        ok = [(p, step_median(r)) for p, r in cells.items() if r.get("status") == "ok" and p > 0]
        if ok:
            ax.plot([p for p, _ in ok], [v for _, v in ok], "o-", color=color, label=f"{name} B={b}")
        failed = [p for p, r in cells.items() if r.get("status") != "ok" and p > 0]
        if failed:
            ax.plot(failed, [0.96] * len(failed), "x", color=color, markersize=9, transform=top, clip_on=False,
                    label=None if ok else f"{name} B={b} (failed)")
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ctxs = sorted({p for cells in series.values() for p in cells if p > 0})
    ax.xaxis.set_major_locator(FixedLocator(ctxs))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _ctx(int(round(x)))))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.set_xlabel("context length (prompt tokens before the generation; log2 axis)")
    ax.set_ylabel("time per generated token, ms\n(median decode step at batch B = one token per sequence)")
    gpus = ", ".join(sorted({r.get("gpu", "?") for r in records}))
    ax.set_title(f"Step time against context on {gpus}\n(flat: constant-cost state; x at the top: OOM/failed)",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, plt, path)


def summary_stats(records: list[dict], superseded: dict[str, list[dict]] | None = None) -> str:
    """records: one per cell (latest_records)."""
    ok = [r for r in records if r.get("status") == "ok"]
    n_old = sum(len(rs) for rs in (superseded or {}).values())
    return f"{len(records)} cells, {len(ok)} ok, {len(records) - len(ok)} failed" + \
           (f" ({n_old} superseded record(s) of re-run cells not counted)" if n_old else "") + \
           f"; median step {statistics.median([r['step_ms']['mean'] for r in ok if 'step_ms' in r] or [0]):.3f} ms"


def add_arguments(p):
    p.add_argument("logdirs", nargs="+", help="logdirs (or results.jsonl files) to read")
    p.add_argument("--out", required=True,
                   help="directory for report.md, throughput.png and (several prompt lengths) context.png")
    p.add_argument("--baseline", default=None, help="row used as 1x in the speed-up table (default: the first row)")
    p.add_argument("--metric", default="decode_tokens_per_s", help="record field shown (default decode_tokens_per_s)")


def main(args) -> int:
    prepare_logdir(args.out, flag="--out", files=OUTPUTS)
    records, notes = load_records(args.logdirs)
    records, superseded = latest_records(records)
    check_metric(records, args.metric)
    md = markdown(records, args.baseline, args.metric, notes=[superseded_note(superseded)] + notes)
    with open(os.path.join(args.out, "report.md"), "w") as fh:
        fh.write(md)
    written = [os.path.join(args.out, "report.md"),
               plot(records, os.path.join(args.out, "throughput.png"), args.metric)]
    ctx_path = os.path.join(args.out, "context.png")
    if plot_context(records, ctx_path):
        written.append(ctx_path)
    elif os.path.isfile(ctx_path):
        os.remove(ctx_path)  # a previous report's plot, from records this report no longer has
    print(md)
    print(f"{summary_stats(records, superseded)}\nwrote {', '.join(written)}")
    return 0
