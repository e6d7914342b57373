"""Matplotlib figures for the docs: route quality against cost, policy curves."""

from __future__ import annotations


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_route_frontier(rows: list[dict], path: str, title: str, screened_out: list[dict] = ()) -> None:
    """Perplexity and top-1 agreement of every route against its relative cost; `screened_out` rows (candidates
    the build dropped) as grey crosses."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    costs = [r["cost"] for r in rows]
    a.plot(costs, [r["ppl"] for r in rows], "o-", label="routes")
    b.plot(costs, [r["top1_agree"] for r in rows], "o-", color="tab:green", label="routes")
    _mixing_line(a, b, rows)
    if screened_out:
        for ax, key in ((a, "ppl"), (b, "top1_agree")):
            ax.plot([r["cost"] for r in screened_out], [r[key] for r in screened_out], "x", color="grey",
                    label="screened out on validation")
    for r in list(rows) + list(screened_out):
        a.annotate(r["name"], (r["cost"], r["ppl"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        b.annotate(r["name"], (r["cost"], r["top1_agree"]), fontsize=7, xytext=(3, -9), textcoords="offset points")
    a.set(xlabel="cost (FLOPs/token relative to large)", ylabel="perplexity", title=title)
    b.set(xlabel="cost (FLOPs/token relative to large)", ylabel="top-1 agreement with large")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _mixing_line(ppl_ax, top1_ax, rows: list[dict]) -> None:
    """The two whole models mixed at every share (eval/mixing.py), dashed, where the rows hold both."""
    from stitchllm.eval.mixing import with_mixing_line

    ends = {r["name"]: r for r in rows if r["name"] in ("small", "large")}
    if len(ends) < 2:
        return
    lo, hi = ends["small"]["cost"], ends["large"]["cost"]
    grid = [dict(ends["small"], name="", cost=lo + (hi - lo) * i / 50) for i in range(51)]
    line = with_mixing_line(grid + list(ends.values()))[:51]
    ppl_ax.plot([r["cost"] for r in line], [r["mix_ppl"] for r in line], "--", color="grey",
                label="mixing the whole models")
    top1_ax.plot([r["cost"] for r in line], [r["mix_top1"] for r in line], "--", color="grey",
                 label="mixing the whole models")


def plot_router_curves(report: dict, path: str) -> None:
    """Top-1 agreement against average cost for every policy."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, r in report["policies"].items():
        curve = r["curve"]
        ax.plot([c for c, _ in curve], [q for _, q in curve], ".-", label=f"{name} (APGR {r['apgr']:.2f})")
    ax.set(xlabel="average cost (relative FLOPs/token)", ylabel="mean top-1 agreement with large",
           title="Routing policies on held-out requests")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bench(report: dict, directory: str) -> None:
    """throughput_goodput.png (against offered load, per policy) and pareto.png (quality against peak throughput)."""
    from pathlib import Path

    plt = _pyplot()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for policy in dict.fromkeys(r["policy"] for r in report["results"]):
        rows = [r for r in report["results"] if r["policy"] == policy]
        a.plot([r["rate"] for r in rows], [r["throughput_tok_s"] for r in rows], "o-", label=policy)
        b.plot([r["rate"] for r in rows], [r["goodput_rps"] for r in rows], "o-", label=policy)
    a.set(xlabel="offered load (requests/s)", ylabel="output tokens/s", title="Throughput")
    b.set(xlabel="offered load (requests/s)", ylabel="requests/s meeting both SLOs", title="Goodput")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "throughput_goodput.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for policy, tok_s in report["saturation"].items():
        ax.plot(tok_s, report["saturation_quality"][policy]["top1"], "o", label=policy)
    ax.set(xlabel="peak output tokens/s (saturation)", ylabel="top-1 agreement with large (served requests)",
           title="Quality against peak throughput")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    plt.close(fig)
