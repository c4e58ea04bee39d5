"""The search's outputs: :class:`SearchReport` (``report.json``), the plan (``plan.json``),
``summary.md`` and the PNG plots (``sensitivity.png``, ``tradeoff.png``; matplotlib is
optional: without it the plots are left out)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...conversion.plan import save_plan
from ...util.fileio import atomic_write_text
from .report_ladder import ladder_markdown, ladder_plot
from .verdict import verdict_lines

__all__ = ["SearchReport", "plot", "summary_markdown", "write_outputs"]


@dataclass
class SearchReport:
    """A search's result, as ``report.json`` holds it: the config and identity it ran under,
    the baseline, one row per candidate layer (shape, savings, probe drops, timings, mode,
    score, ``chosen``), the group probes, the zero-shot-vs-probe rank correlation, the
    selection (with its verifications), the final comparison and the plan."""

    config: dict
    identity: dict
    baseline: dict
    layers: list[dict]
    groups: list[dict]
    spearman_zero_shot_vs_probe: float | None
    selection: dict
    final: dict
    plan: dict
    seconds: float = 0.0
    world_size: int = 1  # ranks of the (last) run; each probe row says which rank ran it
    verdict: dict = field(default_factory=dict)  # .verdict.verdict's numbers
    # ladder=True: rungs, rung probes, the ladder's selection, the peer rules, the chosen
    # {layer: C_b} plan and its source (.ladder_stage)
    ladder: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @property
    def chosen(self) -> list[str]:
        return [r["fqn"] for r in self.layers if r["chosen"]]

    def table(self) -> str:
        lines = [
            f"{'layer':28s} {'shape':>15s} {'C_b':>4s} {'zero-shot':>9s} {'probe':>7s} "
            f"{'MACs saved':>11s} {'ms saved':>8s} {'runs':>13s}  chosen",
            "-" * 110,
        ]
        for r in self.layers:
            shape = f"{r['C_in']}->{r['C_out']} {r['kernel'][0]}x{r['kernel'][1]}"
            ts = r.get("time_saved_ms")
            lines.append(
                f"{r['fqn'][:28]:28s} {shape:>15s} {r['C_b']:>4d} {r['zero_shot_drop']:>8.2f}p "
                f"{r['probe_drop']:>6.2f}p {r['macs_saved']:>11,} "
                f"{'' if ts is None else f'{ts:.3f}':>8s} {_runs(r):>13s}  "
                f"{_chosen(r)}"
            )
        lines.append(
            "(drops in percentage points of validation accuracy vs the baseline; "
            "runs: the mode a converted layer runs, the faster of fused and weight "
            "in the search's timing; train/inference where they differ)"
        )
        if self.final:
            seeds = len(self.final["dense"].get("val_acc_per_seed", [0]))
            lines.append("")
            lines.append(
                f"{'model':8s} {'val acc (' + str(seeds) + ' seeds)':>18s} "
                f"{'drop pp':>14s} {'params':>10s} {'MACs/img':>11s} "
                f"{'train step ms':>14s} {'infer ms':>9s}"
            )
            for name in self.final:
                f = self.final.get(name)
                if f:
                    acc = f"{100 * f['val_acc']:.2f} +- {100 * f.get('val_acc_sd', 0):.2f}%"
                    drop = (
                        f"{f.get('drop_pp', 0):+.2f} +- {f.get('drop_sd_pp', 0):.2f}"
                        if name != "dense"
                        else ""
                    )
                    lines.append(
                        f"{name:8s} {acc:>18s} {drop:>14s} {f['params']:>10,} "
                        f"{f['macs']:>11,} {f['train_step_ms']:>14.2f} "
                        f"{f['infer_ms']:>9.2f}"
                    )
            lines.append(
                "(mean +- sample sd over the seeds; drop: paired, each converted "
                "model against its own seed's dense model; times: median of the "
                "timing rounds, seed 0's models)"
            )
        return "\n".join(lines)


def write_outputs(report: SearchReport, out: Path) -> dict[str, Path]:
    """``report.json``, ``plan.json``, ``summary.md`` and the plots in ``out`` (atomic
    writes); returns their paths by kind."""
    out = Path(out)
    paths = {
        "report": out / "report.json",
        "plan": out / "plan.json",
        "summary": out / "summary.md",
    }
    atomic_write_text(paths["report"], report.to_json())
    save_plan(
        report.plan,
        paths["plan"],
        meta={
            "source": "tritonbasis search",
            "max_drop_pp": report.config["max_drop"],
            "baseline_val_acc": report.baseline["val_acc"],
            "chosen": report.chosen,
        },
    )
    atomic_write_text(paths["summary"], summary_markdown(report))
    with contextlib.suppress(ImportError):  # matplotlib is optional
        paths.update(plot(report, out))
    return paths


def summary_markdown(report: SearchReport) -> str:
    b = report.baseline
    s = report.selection
    ident = report.identity
    data = ident.get("data", "?")
    if isinstance(data, dict):
        shape = "x".join(map(str, data.get("input_shape", [])[1:]))
        data = (
            f"{data.get('name', '?')} ({data.get('train_size', '?')} train / "
            f"{data.get('val_size', '?')} val, {shape} px)"
        )
    width = f" width {ident['width']}" if "width" in ident else ""
    lines = ["# tritonbasis sensitivity search", ""]
    if not s.get("within_budget", True):
        lines += [
            f"> **WARNING: OVER BUDGET.** The chosen plan's verified drop is "
            f"{s['verified_drop']:.2f} pp, above the {s['max_drop']} pp budget, after "
            f"{s['backoffs']} back-offs (max_backoff). Do not use plan.json as is.",
            "",
        ]
    lines += [
        f"* model: {ident.get('model', ident.get('model_class'))}{width}, data: {data}",
        f"* spec: {report.config['spec']}, budget: {report.config['max_drop']} pp, "
        f"sensitivity by probe {report.config.get('sensitivity', 'accuracy')}, selection "
        f"{s.get('method', 'greedy')}",
        f"* baseline val acc {100 * b['val_acc']:.2f}%, {b['params']:,} params, "
        f"{b['macs']:,} MACs/image",
        f"* {'single-ratio subset search: ' if report.ladder else ''}chosen "
        f"{len(s['chosen'])} of {len(report.layers)} layers; predicted drop "
        f"{s['predicted_drop']:.2f} pp (sum of single-layer probes), verified "
        f"{s['verified_drop']:.2f} pp (combined probe), {s['backoffs']} over-budget probes",
        f"* zero-shot vs probe ranking (Spearman rho): {report.spearman_zero_shot_vs_probe}",
        f"* {report.seconds:.0f} s",
        "",
        "## Verdict",
        "",
        *[f"* {x}" for x in verdict_lines(report.verdict)],
        "",
        "## Layers and the final comparison",
        "",
        "```",
        report.table(),
        "```",
        "",
    ]
    if s.get("steps"):
        lines += [
            "## Selection steps (predicted = sum of single-layer probe drops; verified = "
            "combined probe)",
            "",
            "| step | layers | predicted drop (pp) | verified drop (pp) | verified loss "
            "delta | fits |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {i + 1} | {st['n_layers']} | {st['predicted_drop']:.2f} | "
            f"{st['verified_drop']:.2f} | {st.get('verified_loss_delta') or 0:.4f} | "
            f"{'yes' if st['fits'] else 'no'} |"
            for i, st in enumerate(s["steps"])
        ]
        lines.append("")
    lines += ladder_markdown(report)
    if report.groups:
        lines += [
            "| group | layers | probe drop (pp) | sum of its layers' drops |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {g['group']} | {len(g['layers'])} | {g['probe_drop']:.2f} | "
            f"{g['sum_of_layer_probe_drops']:.2f} |"
            for g in report.groups
        ]
    return "\n".join(lines) + "\n"


def plot(report: SearchReport, out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 (matplotlib.ticker below)

    paths = {}
    rows = report.layers
    if rows:
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows)), 4))
        xs = range(len(rows))
        ax.bar(
            [x - 0.2 for x in xs],
            [r["zero_shot_drop"] for r in rows],
            0.4,
            label="zero-shot",
            color="#bbbbbb",
        )
        ax.bar(
            [x + 0.2 for x in xs],
            [r["probe_drop"] for r in rows],
            0.4,
            label=f"probe ({report.config['probe_steps']} steps)",
            color=["#d62728" if r["chosen"] else "#1f77b4" for r in rows],
        )
        ax.set_xticks(list(xs), [r["fqn"] for r in rows], rotation=70, ha="right", fontsize=7)
        ax.set_ylabel("val accuracy drop (pp)")
        ax.set_yscale("symlog", linthresh=1.0)
        top = max([r["zero_shot_drop"] for r in rows] + [r["probe_drop"] for r in rows] + [1])
        ax.set_ylim(top=top * 2)
        ax.set_title("sensitivity per layer (red: chosen)")
        ax.legend()
        fig.tight_layout()
        paths["sensitivity_png"] = out / "sensitivity.png"
        fig.savefig(paths["sensitivity_png"], dpi=120)
        plt.close(fig)
    if report.final:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
        for name, color in (("dense", "k"), ("chosen", "#d62728"), ("naive", "#1f77b4")):
            f = report.final.get(name)
            if not f:
                continue
            for ax, key in zip(axes, ("train_step_ms", "params")):
                ax.errorbar(
                    f[key],
                    100 * f["val_acc"],
                    yerr=100 * f.get("val_acc_sd", 0.0),
                    fmt="o",
                    color=color,
                    ms=7,
                    capsize=4,
                    label=name,
                )
                ax.annotate(
                    name, (f[key], 100 * f["val_acc"]), textcoords="offset points", xytext=(5, 5)
                )
        axes[0].set_xlabel(f"training step time (ms, batch {report.config['time_batch']})")
        axes[1].set_xlabel("parameters (thousands)")
        axes[1].xaxis.set_major_formatter(
            matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1e3:.0f}k")
        )
        for ax in axes:
            ax.set_ylabel("val accuracy (%)")
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle("accuracy (mean +- sd over seeds) vs cost: dense / chosen / naive")
        fig.tight_layout()
        paths["tradeoff_png"] = out / "tradeoff.png"
        fig.savefig(paths["tradeoff_png"], dpi=120)
        plt.close(fig)
    paths.update(ladder_plot(report, out))
    return paths


def _chosen(row: dict) -> str:
    """The chosen column: ``yes``, or the chosen C_b of a ladder plan."""
    if "chosen_C_b" in row:
        return "" if row["chosen_C_b"] is None else f"C_b {row['chosen_C_b']}"
    return "yes" if row["chosen"] else ""


def _runs(row: dict) -> str:
    """The mode column: ``fused``, or ``fused/weight`` when inference runs another mode."""
    mode, infer = row.get("mode") or "", row.get("mode_infer")
    return f"{mode}/{infer}" if infer and mode and infer != mode else mode
