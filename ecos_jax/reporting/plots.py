"""Every experiment's figures (matplotlib, Agg backend, PNG written atomically).

  accuracy_vs_budget   ECOS applications: client accuracy against budget, one line per method
  sweep_pool, sweep_epsilon, sweep_communication   the ECOS sweeps
  accuracy_vs_epsilon  DP-SGD test accuracy against ε
  image_grid, score_histograms   data valuation: top/bottom-ranked samples, score distributions
  probe_curves         CoOpt: linear-probe accuracy against epochs and seconds
  audit_bounds         privacy audit: empirical ε lower bound against the claim

Each takes the records its experiment already computed and a path; none computes a result.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ecos_jax.utils.io import atomic_write_bytes  # noqa: E402

METHOD_STYLE = {"ecos": ("ECOS", "C0", "o"), "random": ("Random", "C1", "s"), "kcenter": ("K-Center", "C2", "^"),
                "oracle": ("oracle (in-domain)", "gray", "x")}


def _show(ax, image: np.ndarray) -> None:
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(np.clip(img, 0.0, 1.0))
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid(
    path: str,
    rows: Sequence[tuple[str, np.ndarray, np.ndarray]],
    *,
    title: str = "",
) -> None:
    """One row per (label, top images [k,H,W,C], bottom images [k,H,W,C]): top-k | bottom-k.

    Images are shown best first on the left half and lowest first on the right half.
    """
    k = max(max(len(t), len(b)) for _, t, b in rows)
    fig, axes = plt.subplots(len(rows), 2 * k + 1, figsize=(0.75 * (2 * k + 1) + 1.2, 0.85 * len(rows) + 0.6),
                             squeeze=False)
    for r, (label, top, bottom) in enumerate(rows):
        for c in range(2 * k + 1):
            axes[r, c].axis("off")
        for c, img in enumerate(top):
            axes[r, c].axis("on")
            _show(axes[r, c], img)
        for c, img in enumerate(bottom):
            axes[r, k + 1 + c].axis("on")
            _show(axes[r, k + 1 + c], img)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    axes[0, 0].set_title(f"top {k} →", fontsize=8, loc="left")
    axes[0, k + 1].set_title(f"bottom {k} →", fontsize=8, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def score_histograms(
    path: str,
    scores: Mapping[str, Mapping[str, np.ndarray]],
    *,
    bins: int = 40,
    title: str = "",
) -> None:
    """One panel per metric; one step histogram per run label within it.

    scores: {metric: {run label (e.g. 'ε=3'): [N] scores}}.
    """
    metrics = list(scores)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 2.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for label, values in scores[metric].items():
            ax.hist(np.asarray(values), bins=bins, histtype="step", density=True, label=label)
        ax.set_title(metric, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0, -1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Saves a matplotlib figure as PNG atomically and closes it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def accuracy_vs_budget(avg: dict, path: str | os.PathLike, budgets: list[int]) -> None:
    """One line per method (mean ± std over seeds of the domain average); 'local' as a level."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for m in sorted({m for m, _ in avg}):
        if m == "local":
            mean, _, _ = avg[("local", 0)]
            ax.axhline(100 * mean, ls="--", c="gray", label=f"local ({100 * mean:.1f})")
            continue
        pts = [(b, *avg[(m, b)][:2]) for b in budgets if (m, b) in avg]
        bs, ms, ss = map(np.array, zip(*pts))
        ax.errorbar(bs, 100 * ms, yerr=100 * ss, marker="o", capsize=3, label=m)
    ax.set_xlabel("budget (pool samples)")
    ax.set_ylabel("client test accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def sweep_pool(p: dict, path: str | os.PathLike, pool_labels: Mapping[str, str]) -> None:
    """One panel per pool composition: accuracy against budget; the oracle dashed in each."""
    rows = p["rows"]
    kinds = [k for k in pool_labels if any(r["pool"] == k for r in rows)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.6), sharey=True, squeeze=False)
    oracle = sorted((r["budget"], r["accuracy"]) for r in rows if r["method"] == "oracle")
    for ax, kind in zip(axes[0], kinds):
        for i, m in enumerate(("ecos", "random", "kcenter")):
            pts = sorted((r["budget"], r["accuracy"]) for r in rows if r["pool"] == kind and r["method"] == m)
            if pts:
                label, c, mk = METHOD_STYLE[m]
                dodge = 1 + 0.03 * (i - 1)  # keep overlapping error bars apart (log x)
                ax.errorbar([b * dodge for b, _ in pts], [100 * s["mean"] for _, s in pts],
                            yerr=[100 * s["std"] for _, s in pts], marker=mk, c=c, capsize=3, label=label)
        if oracle:
            ax.plot([b for b, _ in oracle], [100 * s["mean"] for _, s in oracle], ls="--", marker="x", c="gray",
                    label="oracle (in-domain, ID+OoD pool)")
        ax.set_title(f"pool: {pool_labels[kind]}")
        ax.set_xscale("log")
        budgets = sorted({r["budget"] for r in rows})
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("budget (labelled pool samples, log scale)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("client test accuracy (%)")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    save_figure(fig, path)


def sweep_epsilon(e: dict, path: str | os.PathLike) -> None:
    """Accuracy and in-domain share of ECOS's picks against ε (log x); Random as a band."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    dp = [r for r in e["ecos"] if not r["exact_counts"]]
    exact = [r for r in e["ecos"] if r["exact_counts"]]
    for ax, key, ylabel in ((a1, "accuracy", "client test accuracy (%)"),
                            (a2, "in_domain", "ECOS picks from the client's domain (%)")):
        if dp:
            ax.errorbar([r["epsilon"] for r in dp], [100 * r[key]["mean"] for r in dp],
                        yerr=[100 * r[key]["std"] for r in dp], marker="o", c="C0", capsize=3, label="ECOS (DP)")
        for r in exact:
            ax.errorbar([r["epsilon"]], [100 * r[key]["mean"]], yerr=[100 * r[key]["std"]], marker="*", ms=11,
                        c="C3", capsize=3, ls="none", label=f"ECOS, exact counts (ε = ∞, run at {r['epsilon']:g})")
        ref = e["random"][key]
        if ref["mean"] is not None:
            m, s = 100 * ref["mean"], 100 * ref["std"]
            ax.axhline(m, c="C1", ls="--", label="Random")
            ax.axhspan(m - s, m + s, color="C1", alpha=0.15)
        ax.set_xscale("log")
        ticks = [r["epsilon"] for r in e["ecos"]]
        ax.set_xticks(ticks, [("∞" if r["exact_counts"] else f"{r['epsilon']:g}") for r in e["ecos"]], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("ε of the client's response (δ fixed, log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    a1.legend(fontsize=8, loc="lower right")
    budget = e["ecos"][0]["budget"] if e["ecos"] else ""
    fig.suptitle(f"ECOS against ε (budget {budget})", fontsize=10)
    save_figure(fig, path)


def sweep_communication(c: dict, path: str | os.PathLike, name: str, fold: float) -> None:
    """Left: bytes per client domain (log y). Right: bytes against client samples (log-log)."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1.3, 1]})
    doms = [r["domain"] for r in c["domains"]]
    x = np.arange(len(doms))
    bars = [("upload client data", [r["upload_client_data_bytes"] for r in c["domains"]], "C3"),
            ("download pool", [r["download_pool_bytes"] for r in c["domains"]], "C7"),
            ("ECOS float32", [r["ecos_float32"]["total"] for r in c["domains"]], "C0"),
            ("ECOS lean (f16 / int16)", [r["ecos_lean"]["total"] for r in c["domains"]], "C9")]
    w = 0.8 / len(bars)
    for i, (label, vals, col) in enumerate(bars):
        a1.bar(x + (i - (len(bars) - 1) / 2) * w, vals, w, label=label, color=col)
    a1.set_yscale("log")
    a1.set_ylim(top=30 * max(max(v) for _, v, _ in bars))  # room for the legend above the bars
    a1.set_xticks(x, doms, rotation=30, ha="right", fontsize=8)
    a1.set_ylabel("bytes")
    a1.set_title(f"{name}: one round vs moving data (client n = {c['domains'][0]['n_client']})", fontsize=9)
    a1.legend(fontsize=7, ncol=2, loc="upper center")
    a1.grid(alpha=0.3, axis="y")
    # The curve depends on the client size only; the largest domain spans every size.
    cv = max(c["vs_client_size"].values(), key=lambda v: v["domain_size"])
    ns = np.array(cv["n"])
    a2.plot(ns, cv["upload_bytes"], marker="o", c="C3", label="upload client data")
    a2.plot(ns, np.array(cv["upload_bytes"]) / fold, ls=":", c="C3", label=f"upload / {fold:.0f}")
    for e, col in (("float32", "C0"), ("lean", "C9")):
        tot = c["ecos"][e]["total"]
        a2.axhline(tot, c=col, label=f"ECOS {e} ({tot} B)")
        n100 = c["crossing"][e]["min_client_samples"]
        a2.axvline(n100, c=col, ls="--", lw=0.8)
        a2.annotate(f"{fold:.0f}× at n = {n100}", (n100, tot), textcoords="offset points", xytext=(4, 6),
                    fontsize=7, color=col)
    a2.set_xscale("log")
    a2.set_yscale("log")
    a2.set_xlabel("client samples (log scale)")
    a2.set_ylabel("bytes")
    a2.set_title(f"against client size (R = {c['num_centroids']}, d = {c['dim']})", fontsize=9)
    a2.legend(fontsize=7)
    a2.grid(alpha=0.3, which="both")
    save_figure(fig, path)


def accuracy_vs_epsilon(records: list[dict], path: str | os.PathLike) -> None:
    """Test accuracy against the run's ε (PLD, log x); the non-private run as a dashed level.

    Several records at one ε (seeds) are drawn as their mean with a ± std bar."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    # PLD: it accounts every DP-SGD sampler (RDP cannot analyse truncated Poisson).
    by_eps: dict[str, list[float]] = {}
    for r in records:
        by_eps.setdefault(r["epsilon_pld"], []).append(100 * r["test_accuracy"])
    finite = sorted((float(e), np.mean(a), np.std(a)) for e, a in by_eps.items() if e != "inf")
    if finite:
        xs, ys, es = zip(*finite)
        ax.errorbar(xs, ys, yerr=es if max(es) > 0 else None, marker="o", capsize=3,
                    label="DP-SGD (ε at δ, PLD)")
        ax.set_xscale("log")
    if "inf" in by_eps:
        level = float(np.mean(by_eps["inf"]))
        ax.axhline(level, ls="--", c="gray", label=f"non-private ({level:.1f}%)")
    ax.set_xlabel("ε")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def time_to_accuracy(curves: Mapping[str, Sequence[Sequence[dict]]], path: str | os.PathLike) -> None:
    """Test accuracy against training wall time, one line per run (label -> runs, each a list
    of {"seconds", "test_accuracy"} points; seconds exclude the evaluations themselves)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for i, (label, runs) in enumerate(curves.items()):
        for j, points in enumerate(runs):
            ax.plot([p["seconds"] for p in points], [100 * p["test_accuracy"] for p in points],
                    marker="o", ms=2, c=f"C{i}", alpha=0.8, label=label if j == 0 else None)
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def probe_curves(curves: dict[str, list[list[dict]]], path: str | os.PathLike) -> None:
    """Linear-probe accuracy against epoch and against training seconds, mean over seeds."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, runs in curves.items():
        epochs = [e["epoch"] for e in runs[0]]
        acc = np.mean([[e["probe_accuracy"] for e in r] for r in runs], axis=0) * 100
        sec = np.mean([[e["seconds"] for e in r] for r in runs], axis=0)
        style = "--" if method == "supervised" else "-"
        axes[0].plot(epochs, acc, style, marker="o", ms=3, label=method)
        axes[1].plot(sec, acc, style, marker="o", ms=3, label=method)
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("training seconds (compile excluded)")
    for ax in axes:
        ax.set_ylabel("linear-probe accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"CoOpt vs baselines: linear probe on held-out pool images (mean of {len(runs)} seed(s))")
    save_figure(fig, path)


def probe_time_to_accuracy(curves: dict[str, list[list[dict]]], path: str | os.PathLike,
                           offsets: dict[str, float] | None = None) -> None:
    """Linear-probe accuracy against training seconds per method (mean over seeds, band = min..max);
    `offsets[m]` seconds a method pays before training (CoOpt's prior targets) shift a dashed copy."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, runs in curves.items():
        acc = np.array([[e["probe_accuracy"] for e in r] for r in runs]) * 100
        sec = np.mean([[e["seconds"] for e in r] for r in runs], axis=0)
        (line,) = ax.plot(sec, acc.mean(0), marker="o", ms=3, label=method)
        ax.fill_between(sec, acc.min(0), acc.max(0), color=line.get_color(), alpha=0.15)
        if offsets and offsets.get(method):
            ax.plot(sec + offsets[method], acc.mean(0), "--", color=line.get_color(),
                    label=f"{method} + {offsets[method]:.0f} s of targets")
    ax.set(xlabel="training seconds (compile excluded)", ylabel="linear-probe accuracy (%)",
           title=f"Time to accuracy (mean of {len(runs)} seed(s), band: min to max)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def audit_bounds(records: list[dict], path: str | os.PathLike) -> None:
    """Empirical ε lower bound against claimed ε per mechanism, controls dotted, the diagonal dashed."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = sorted({r["mechanism"] for r in records})
    colors = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    top = max(max(r["claimed_epsilon"], r["epsilon_lower_bound"]) for r in records) * 1.1
    ax.plot([0, top], [0, top], color="grey", lw=1, ls="--", label="bound = claim")
    for name in names:
        for is_control, marker in ((False, "o"), (True, "x")):
            rs = [r for r in records if r["mechanism"] == name and (r["control"] is not None) == is_control]
            if rs:
                ax.plot([r["claimed_epsilon"] for r in rs], [r["epsilon_lower_bound"] for r in rs],
                        marker=marker, ls="-" if not is_control else ":", color=colors[name],
                        label=f"{name}{' (control)' if is_control else ''}")
    ax.set(xlabel="claimed ε (the release's ledger, tightest accountant)",
           ylabel="empirical ε lower bound", xlim=(0, top), ylim=(0, top),
           title="Privacy audit: real releases stay under the diagonal")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    save_figure(fig, path)
