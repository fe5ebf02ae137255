"""Tables and chart of the ablation grid (``tools/ablation.py``): every cell's metrics averaged over its seeds, the
paper's Tables V/VI (SARL x SAL per detector) and VII (beta) in markdown, this project's one-change rows with their
AP difference to the cell each differs from, and a bar chart of AP."""
from __future__ import annotations

import math
import statistics
from typing import Dict, List

from .ablation import BETAS, PAPER_CELLS, SUMMARY_KEYS

__all__ = ["mean_over_seeds", "markdown_tables", "bar_chart"]


def mean_over_seeds(cell: Dict, runs: List[Dict]) -> Dict:
    """One row per cell: every metric averaged over its seeds, plus the seeds and the AP of each."""
    keys = list(dict.fromkeys(k for r in runs for k in r["metrics"]))
    metrics = {}
    for k in keys:
        values = [r["metrics"][k] for r in runs if k in r["metrics"] and not math.isnan(r["metrics"][k])]
        metrics[k] = statistics.fmean(values) if values else float("nan")
    return dict(cell, metrics=metrics, seeds=[r["seed"] for r in runs], ap_per_seed=[r["metrics"]["AP"] for r in runs])


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def _row_values(r: Dict, classes: List[str], with_spread: bool) -> List[str]:
    m = r["metrics"]
    values = [_fmt(m.get(k)) for k in SUMMARY_KEYS]
    if with_spread:
        aps = r["ap_per_seed"]
        values.insert(1, _fmt(max(aps) - min(aps)))
    return values + [_fmt(m.get(f"AP-{c}")) for c in classes]


def markdown_tables(results: List[Dict], args) -> str:
    """Tables V/VI (per detector: SARL x SAL) and VII (beta), AP in %, per-class AP columns as the paper.

    ``results`` are rows from :func:`mean_over_seeds`; with more than one seed an "AP spread" column
    (max - min of AP over the seeds) follows AP.
    """
    classes = []
    for r in results:
        classes += [k[3:] for k in r["metrics"] if k.startswith("AP-") and k[3:] not in classes]
    seeds = args.seed_list
    with_spread = len(seeds) > 1
    header_metrics = ["AP", "AP<sub>50</sub>", "AP<sub>75</sub>", "AP<sub>vt</sub>", "AP<sub>t</sub>",
                      "AP<sub>s</sub>", "AP<sub>m</sub>"] + classes
    if with_spread:
        header_metrics.insert(1, "AP spread")
    seed_text = (f"seeds {', '.join(map(str, seeds))} (every value is the mean over the seeds; AP spread = "
                 f"max - min of AP over the seeds)" if with_spread else f"seed {seeds[0]}")
    if getattr(args, "budget_from_config", False):
        budget = f"Budget: the recipe of `{args.config}` (its model, input, data, schedule and solver); {seed_text}"
    else:
        budget = (f"Budget: {args.epochs} epochs ({args.no_aug_epochs} without mosaic) of `{args.train}` at "
                  f"{args.img_size} px, batch {args.ims_per_batch}, width x{args.width}, depth x{args.depth}; "
                  f"{seed_text}; scored on `{args.test}`")
    lines = [budget + " (AI-TOD protocol, AP in %).", ""]
    for det in dict.fromkeys(r["detector"] for r in results):
        paper_rows = [r for r in results if r["detector"] == det and not r.get("variant")]
        rows = [r for r in paper_rows if r["cell"] in PAPER_CELLS]
        lines += [f"**{det.upper()}: SARL and SAL (Tables V/VI)**", "",
                  "| " + " | ".join([det.upper(), "SARL", "SAL"] + header_metrics) + " |",
                  "|" + "---|" * (3 + len(header_metrics))]
        for r in rows:
            marks = ["✓", "✓" if r["sarl"] else "", "✓" if r["sal"] else ""]
            lines.append("| " + " | ".join(marks + _row_values(r, classes, with_spread)) + " |")
        lines.append("")
        if det == "yolov5":
            lines += ["On YOLOv5, SAL on also switches the base loss (CIoU -> 1 - IoU^2) and the objectness target "
                      "(CIoU -> IoU); `--variants loss_parts` changes them one at a time.", ""]
        lines += _one_change_table(det, results, header_metrics, classes, with_spread)
        beta_rows = [r for r in paper_rows if r["sarl"] and r["sal"]]
        if len(beta_rows) > 1:
            lines += [f"**{det.upper()} + SARL + SAL: the factor β (Table VII)**", "",
                      "| " + " | ".join(["β"] + header_metrics) + " |", "|" + "---|" * (1 + len(header_metrics))]
            for r in sorted(beta_rows, key=lambda r: BETAS[r["beta"]]):
                beta = r["beta"].replace("ln2", "ln 2")
                lines.append("| " + " | ".join([beta] + _row_values(r, classes, with_spread)) + " |")
            lines.append("")
    return "\n".join(lines)


def _one_change_table(det: str, results: List[Dict], header_metrics: List[str], classes: List[str],
                      with_spread: bool) -> List[str]:
    """This project's rows of ``det`` (``--variants``), each with the AP difference to the cell it differs from."""
    rows = [r for r in results if r["detector"] == det and r.get("variant")]
    if not rows:
        return []
    ap_of = {r["cell"]: r["metrics"].get("AP") for r in results if r["detector"] == det}
    lines = [f"**{det.upper()}: one change per row (this project's rows; ΔAP = AP minus that of the cell compared "
             "with)**", "", "| " + " | ".join(["row", "vs", "changed", "ΔAP"] + header_metrics) + " |",
             "|" + "---|" * (4 + len(header_metrics))]
    for r in rows:
        reference = ap_of.get(r["compare_with"])
        delta = None if reference is None or r["metrics"].get("AP") is None else r["metrics"]["AP"] - reference
        delta_text = "-" if delta is None or math.isnan(delta) else f"{delta:+.1f}"
        lines.append("| " + " | ".join([r["cell"], r["compare_with"], r["change"], delta_text]
                                        + _row_values(r, classes, with_spread)) + " |")
    return lines + [""]


def bar_chart(results: List[Dict], path: str) -> str:
    """AP per cell (mean over seeds), each seed's AP as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['detector']}\n{r['cell'].replace('sarl_sal_beta_', 'both β=').replace('_', '+')}" for r in results]
    values = [r["metrics"]["AP"] for r in results]
    colours = ["tab:blue" if r["detector"] == "yolox" else "tab:orange" for r in results]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(results)), 4))
    bars = ax.bar(range(len(results)), values, color=colours)
    for i, (bar, value, r) in enumerate(zip(bars, values, results)):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{value:.1f}", ha="center", va="bottom",
                fontsize=8)
        if len(r["ap_per_seed"]) > 1:
            ax.scatter([i] * len(r["ap_per_seed"]), r["ap_per_seed"], color="black", s=10, zorder=3)
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("AP (%)")
    seeds = sorted({s for r in results for s in r["seeds"]})
    ax.set_title(f"Ablation: SARL / SAL / β (same budget; seeds {', '.join(map(str, seeds))})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
