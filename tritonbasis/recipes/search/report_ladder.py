"""The ladder's part of the outputs (``ladder=True``): in ``summary.md`` the rank per layer
(every rung's probe drop, the chosen C_b), the ladder's selection steps and the peer rules'
settings; ``ladder_tradeoff.png``: accuracy drop (mean +- sd over the seeds) against the MACs
and the measured train-step time saved, one point per strategy (chosen, each peer rule's
best fitting setting, naive)."""

from __future__ import annotations

from pathlib import Path

from .ladder import parse_rung_key

__all__ = ["ladder_markdown", "ladder_plot"]


UNITS = {"macs": "MACs", "params": "params", "time": "ms"}


def _num(v) -> str:
    """A saving: counts with thousands separators, milliseconds to 3 decimals."""
    return f"{v:,}" if isinstance(v, int) else f"{v:,.3f}"


def ladder_markdown(report) -> list[str]:
    lad = report.ladder
    if not lad:
        return []
    sel = lad["selection"]
    gain = lad.get("gain", report.config.get("gain", "macs"))
    timed = lad.get("rung_gains")
    t = (
        f", {lad['time_saved_ms']:.3f} ms forward+backward time (the summed per-layer "
        "timings on this device)"
        if "time_saved_ms" in lad
        else ""
    )
    lines = [
        "## Rank ladder: C_b per layer",
        "",
        f"Chosen plan: {len(lad['plan'])} of {len(report.layers)} layers converted, source "
        f"{lad['source']}, {lad.get('macs_saved', 0):,} MACs/image and "
        f"{lad.get('params_saved', 0):,} params saved{t}, verified combined-probe drop "
        f"{lad.get('verified_drop', 0.0):.2f} pp (budget {report.config['max_drop']} pp). "
        f"{len(lad['probes'])} (layer, rank) probes; a layer stops at the first rung whose "
        "own probe loses more than the budget.",
        "",
        "| layer | C_out | probe drop (pp) per C_b |"
        + (" time saved (ms) per C_b |" if timed else "")
        + " chosen C_b |",
        "|---|---|---|" + ("---|" if timed else "") + "---|",
    ]
    for r in report.layers:
        rungs = ", ".join(f"{cb}: {d:.2f}" for cb, d in (r.get("ladder") or {}).items())
        cb = r.get("chosen_C_b")
        ms = ""
        if timed:
            f = r["fqn"]
            ms = ", ".join(
                f"{cb}: {v['time_saved_ms']:.3f}"
                for (layer, cb), v in ((parse_rung_key(k), v) for k, v in timed.items())
                if layer == f
            )
            ms = f" {ms or '-'} |"
        lines.append(
            f"| {r['fqn']} | {r['C_out']} | {rungs or '-'} |{ms} "
            f"{cb if cb is not None else 'dense'} |"
        )
    lines.append("")
    for title, steps in (
        ("Ladder selection (bisection over the score-ordered rank steps)", sel.get("steps", [])),
        (
            "Refinement from the best plan so far (one step at a time)",
            lad.get("refine", {}).get("steps", []),
        ),
    ):
        if not steps:
            continue
        lines += [
            f"### {title}",
            "",
            f"| probe | steps | layers | saved ({UNITS[gain]}) | predicted (pp) | "
            "verified (pp) | fits |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {i + 1} | {s['n_steps']} | {s['n_layers']} | {_num(s['saved'])} | "
            f"{s['predicted_drop']:.2f} | {s['verified_drop']:.2f} | "
            f"{'yes' if s['fits'] else 'no'} |"
            for i, s in enumerate(steps)
        ]
        lines.append("")
    if lad.get("peers"):
        lines += [
            "### Peer rules: best setting within the budget (combined probe)",
            "",
            f"| rule | best setting | layers | saved ({UNITS[gain]}) |"
            + (" MACs saved |" if gain != "macs" else "")
            + " verified (pp) | settings tried |",
            "|---|---|---|---|" + ("---|" if gain != "macs" else "") + "---|---|",
        ]
        for rule, p in lad["peers"].items():
            tried = "; ".join(_tried(t) for t in p.get("tried", []))
            macs = f" {p.get('macs_saved', 0):,} |" if gain != "macs" else ""
            lines.append(
                f"| {rule} | {p['setting'] if p['fits'] else 'none fits'} | {len(p['plan'])} | "
                f"{_num(p['saved'])} |{macs} {p['verified_drop']:.2f} | {tried or '-'} |"
            )
        lines.append("")
    return lines


def _tried(t: dict) -> str:
    setting = {k: v for k, v in t.items() if k not in ("verified_drop", "fits", "skipped")}
    if t.get("skipped"):
        return f"{setting} skipped (harsher than one over budget)"
    return f"{setting} {t['verified_drop']:.2f}"


STYLE = {
    "chosen": ("#d62728", "o"),
    "naive": ("#1f77b4", "s"),
    "uniform": ("#2ca02c", "^"),
    "energy": ("#9467bd", "v"),
    "channels": ("#8c564b", "D"),
    "subset": ("#ff7f0e", "P"),
}


def ladder_plot(report, out: Path) -> dict[str, Path]:
    """``ladder_tradeoff.png`` (matplotlib imported by the caller)."""
    import matplotlib.pyplot as plt

    final = report.final
    if not report.ladder or not final or "dense" not in final:
        return {}
    d = final["dense"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    keys = (("macs", "MACs saved (%)"), ("train_step_ms", "train step time saved (%)"))
    for ax, (key, label) in zip(axes, keys):
        for i, (name, (color, marker)) in enumerate(STYLE.items()):
            f = final.get(name)
            if not f:
                continue
            x = 100.0 * (1.0 - f[key] / d[key]) if d[key] else 0.0
            ax.errorbar(
                x,
                f.get("drop_pp", 0.0),
                yerr=f.get("drop_sd_pp", 0.0),
                fmt=marker,
                color=color,
                ms=8,
                capsize=4,
                label=name,
            )
            # staggered labels: two rules can pick the same plan (same point)
            ax.annotate(
                name,
                (x, f.get("drop_pp", 0.0)),
                textcoords="offset points",
                xytext=(5, 5 - 11 * (i % 3)),
            )
        ax.axhline(report.config["max_drop"], color="k", ls="--", lw=1, label="budget")
        ax.set_xlabel(label)
        ax.set_ylabel("val accuracy drop (pp, mean +- sd)")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    seeds = len(d.get("val_acc_per_seed", [0]))
    fig.suptitle(f"drop vs saving per strategy ({seeds} seeds, paired drops)")
    fig.tight_layout()
    path = Path(out) / "ladder_tradeoff.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"ladder_tradeoff_png": path}
