"""``distrm report``: one self-contained HTML file (plots embedded as base64 PNG) from the
JSON that ``distrm eval pairs`` / ``distrm eval calibration`` / ``benchmarks/table1.py``
write, so a result can be mailed or archived without its run directory.

Example distributions are drawn EXACTLY from the piecewise-linear quantile function: the
probability of a histogram bin is F(right) - F(left) from the exact CDF, so a flat stretch
of the quantile function (a point mass, e.g. the constant tails) shows as a spike, and two
separated groups of quantiles show as two modes. For a gated QRM both mixtures are drawn:
the model's own output (quantile averaging, the QRM paper's formula, unimodal between far
apart attributes) and the probability mixture of the attribute distributions (where
bimodality, i.e. disagreeing attributes, becomes visible).
"""

from __future__ import annotations

import base64
import html
import io
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from distrm.distribution import RewardDistribution

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1150px;color:#222}
h1{font-size:24px;margin-bottom:4px} h2{font-size:19px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0 14px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f4f4f4} td.l,th.l{text-align:left}
.note{color:#555;font-size:13px;max-width:1100px}
img{max-width:100%;border:1px solid #eee;margin:4px 0}
pre{white-space:pre-wrap;background:#f8f8f8;border:1px solid #eee;padding:6px;font-size:12px;max-height:110px;overflow:hidden}
.ex{display:grid;grid-template-columns:1fr 1fr 1fr;gap:8px}
.small{font-size:12px;color:#666}
"""


# ---------------------------------------------------------------------------- plotting helpers
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig_to_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def dist_from_payload(d: dict[str, Any]) -> RewardDistribution:
    v = torch.tensor([d["values"]], dtype=torch.float64)
    if d.get("kind", "quantile") == "ensemble" or not d.get("levels"):
        return RewardDistribution.from_members(v)
    return RewardDistribution.from_quantiles(v, torch.tensor(d["levels"], dtype=torch.float64))


def bin_probabilities(dist: RewardDistribution, edges: np.ndarray) -> np.ndarray:
    """Exact probability of each bin [e_i, e_{i+1}) of one distribution, from its CDF."""
    F = dist.cdf_at(torch.as_tensor(edges, dtype=torch.float64)[None]).numpy()[0]
    # CDF is right-continuous: bin i gets F(e_{i+1}) - F(e_i); mass exactly at the lowest
    # edge would be lost, so the first edge sits below the support (see callers)
    return np.diff(F)


def _hist(ax, dist: RewardDistribution, edges: np.ndarray, **kw) -> None:
    p = bin_probabilities(dist, edges)
    width = np.diff(edges)
    ax.stairs(p / width, edges, **kw)


def _edges(dists: Sequence[RewardDistribution], n: int = 70) -> np.ndarray:
    lo = min(float(d.values.min()) for d in dists)
    hi = max(float(d.values.max()) for d in dists)
    pad = 0.06 * (hi - lo) if hi > lo else 0.05
    return np.linspace(lo - pad, hi + pad, n + 1)


def example_figure(ex: dict[str, Any]) -> str:
    """Chosen vs rejected reward distribution (+ probability mixture), each attribute's
    distribution, and the gate weights, for one pair."""
    plt = _plt()
    c, r = ex["chosen"], ex["rejected"]
    dc, dr = dist_from_payload(c), dist_from_payload(r)
    has_attr = bool(c.get("attributes")) and len(c["attributes"]) > 1 and c.get("attribute_kind") == "quantile"
    fig, axes = plt.subplots(1, 3 if has_attr else 1, figsize=(14 if has_attr else 6, 3.3))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    mix = []
    if has_attr:
        for payload in (c, r):
            names = list(payload["attributes"])
            vals = torch.tensor([[payload["attributes"][a]["values"] for a in names]], dtype=torch.float64)
            w = torch.tensor([[payload["attributes"][a]["weight"] for a in names]], dtype=torch.float64)
            comp = RewardDistribution.from_quantiles(vals, torch.tensor(payload["attribute_levels"], dtype=torch.float64))
            mix.append(RewardDistribution.mix(comp, w, method="probability", levels=torch.linspace(0.005, 0.995, 199, dtype=torch.float64)))
    edges = _edges([dc, dr, *mix])
    _hist(ax, dc, edges, color="tab:green", lw=2, label=f"chosen (mean {c['mean']:.3f})")
    _hist(ax, dr, edges, color="tab:red", lw=2, label=f"rejected (mean {r['mean']:.3f})")
    if mix:
        _hist(ax, mix[0], edges, color="tab:green", lw=1, ls="--", label="chosen, probability mixture")
        _hist(ax, mix[1], edges, color="tab:red", lw=1, ls="--", label="rejected, probability mixture")
    ax.axvline(c["mean"], color="tab:green", lw=0.8, alpha=0.6)
    ax.axvline(r["mean"], color="tab:red", lw=0.8, alpha=0.6)
    ax.set_title("reward distribution (density from the exact CDF)", fontsize=10)
    ax.set_xlabel("reward")
    ax.legend(fontsize=7, loc="upper left")
    if has_attr:
        names = list(c["attributes"])
        wc = np.array([c["attributes"][a]["weight"] for a in names])
        wr = np.array([r["attributes"][a]["weight"] for a in names])
        top = [names[i] for i in np.argsort(-(wc + wr))[:6]]
        ax = axes[1]
        lv = torch.tensor(c["attribute_levels"], dtype=torch.float64)
        cmap = plt.get_cmap("tab10")
        for k, a in enumerate(top):
            for payload, ls in ((c, "-"), (r, ":")):
                q = np.array(payload["attributes"][a]["values"])
                ax.plot(q, lv.numpy(), ls=ls, color=cmap(k % 10), lw=1.4, label=a if ls == "-" else None)
        ax.set_title("attribute quantile functions (solid chosen, dotted rejected)", fontsize=10)
        ax.set_xlabel("attribute score")
        ax.set_ylabel("level tau")
        ax.legend(fontsize=6.5, loc="lower right")
        ax = axes[2]
        y = np.arange(len(names))
        ax.barh(y - 0.2, wc, height=0.4, color="tab:green", label="chosen prompt")
        ax.barh(y + 0.2, wr, height=0.4, color="tab:red", alpha=0.6, label="rejected (same prompt)")
        ax.set_yticks(y, [n[:28] for n in names], fontsize=7)
        ax.invert_yaxis()
        ax.set_title("gate weights", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig_to_data_uri(fig)


# ---------------------------------------------------------------------------- sections
def _esc(s: Any) -> str:
    return html.escape(str(s))


def _pct(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}"


def pairs_section(res: dict[str, Any]) -> str:
    plt = _plt()
    rows = res["rows"]
    secs = list(rows[0]["result"]["sections"]) if rows else []
    parts = [f"<h2>Pairwise accuracy</h2><p class='note'>{_esc(res.get('weighting_note', ''))}</p>"]
    t = ["<table><tr><th class='l'>model [ranking]</th>" + "".join(f"<th>{_esc(s)}</th>" for s in secs) + "<th>Overall</th></tr>"]
    for r in rows:
        rs = r["result"]
        t.append(
            f"<tr><td class='l'>{_esc(r['name'])}</td>"
            + "".join(f"<td>{_pct(rs['sections'][s]['accuracy'])}</td>" for s in secs)
            + f"<td><b>{_pct(rs['overall'])}</b></td></tr>"
        )
    parts.append("".join(t) + "</table>")
    if rows and secs:
        fig, ax = plt.subplots(figsize=(11, 2.8))
        x = np.arange(len(secs) + 1)
        wbar = 0.8 / len(rows)
        for k, r in enumerate(rows):
            vals = [r["result"]["sections"][s]["accuracy"] for s in secs] + [r["result"]["overall"]]
            ax.bar(x + k * wbar - 0.4 + wbar / 2, [100 * (v or 0) for v in vals], width=wbar, label=r["name"])
        ax.axhline(50, color="k", lw=0.6, ls=":")
        ax.set_xticks(x, secs + ["Overall"])
        ax.set_ylabel("accuracy %")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7, ncol=min(4, len(rows)), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
        parts.append(f"<img src='{fig_to_data_uri(fig)}'>")
    subs = list(rows[0]["result"]["subsets"]) if rows else []
    t = ["<h3>Per subset: correct / total (ties)</h3><table><tr><th class='l'>subset</th><th class='l'>section</th>"]
    t += [f"<th>{_esc(r['name'])}</th>" for r in rows] + ["</tr>"]
    for s in subs:
        sec = rows[0]["result"]["subsets"][s].get("section")
        t.append(f"<tr><td class='l'>{_esc(s)}</td><td class='l'>{_esc(sec)}</td>")
        for r in rows:
            c = r["result"]["subsets"].get(s)
            t.append(f"<td>{c['correct']}/{c['total']} ({c['ties']}) {_pct(c['accuracy'])}%</td>" if c else "<td>-</td>")
        t.append("</tr>")
    parts.append("".join(t) + "</table>")
    data = res.get("data", {})
    if data:
        parts.append(
            "<p class='small'>Data: "
            + "; ".join(
                f"{_esc(k)}: {v['n_pairs']} pairs ({_esc(v['split'])} split"
                + (f", capped from {v['load_report']['capped_from']}" if v.get("load_report", {}).get("capped_from") else "")
                + (f", {v['train_prompt_overlap']} prompts shared with training" if v.get("train_prompt_overlap") else "")
                + ")"
                for k, v in data.items()
            )
            + "</p>"
        )
    for label, v in (res.get("variance") or {}).items():
        parts.append(variance_section(label, v))
    for label, exs in (res.get("examples") or {}).items():
        if not exs:
            continue
        parts.append(f"<h2>Example distributions: {_esc(label)}</h2>")
        for ex in exs:
            ok = ex["chosen"]["mean"] > ex["rejected"]["mean"]
            parts.append(
                f"<h3>{_esc(ex['subset'])} #{_esc(ex['id'])}: {_esc(ex['why'])} "
                f"({'correct' if ok else 'wrong'} by the mean)</h3>"
                f"<div class='ex'><pre><b>prompt</b> {_esc(ex['prompt'][:400])}</pre>"
                f"<pre><b>chosen</b> {_esc(ex['chosen_text'][:400])}</pre><pre><b>rejected</b> {_esc(ex['rejected_text'][:400])}</pre></div>"
                f"<img src='{example_figure(ex)}'>"
            )
    return "".join(parts)


def variance_section(label: str, v: dict[str, Any]) -> str:
    """Histograms of the per-pair variance, one column per section: for an ensemble the
    member variance of the chosen reward and of the margin (the uncertainty-aware paper's
    Figure 6), for a quantile model the variance of the chosen-reward distribution."""
    plt = _plt()
    if v.get("var_margin") is None and not np.any(np.asarray(v["var_chosen"], float)):
        return (f"<h2>Variance per section: {_esc(label)}</h2><p class='note'>a point estimate: every predicted "
                f"variance is 0 (nothing to plot).</p>")
    order = ["Chat", "Chat Hard", "Safety", "Reasoning"]
    secs = sorted(dict.fromkeys(v["sections"]), key=lambda x: (order.index(x) if x in order else len(order), x))
    labels = np.asarray(v["sections"], dtype=object)
    rows = [("chosen reward", np.asarray(v["var_chosen"], float), "#3b6ea5")]
    if v.get("var_margin") is not None:
        rows.append(("margin chosen - rejected", np.asarray(v["var_margin"], float), "#c2553a"))
    fig, axes = plt.subplots(len(rows), len(secs), figsize=(3.3 * len(secs) + 0.6, 2.7 * len(rows)), squeeze=False)
    for r, (name, vals, color) in enumerate(rows):
        hi = float(np.quantile(vals, 0.99)) if vals.size else 1.0
        bins = np.linspace(0.0, hi if hi > 0 else 1.0, 31)
        for c, sec in enumerate(secs):
            ax = axes[r, c]
            x = vals[labels == sec]
            ax.hist(np.clip(x, None, bins[-1]), bins=bins, color=color, alpha=0.85, edgecolor="white", linewidth=0.4)
            ax.axvline(float(np.mean(x)), color="k", lw=1, ls="--")
            ax.text(0.97, 0.95, f"n={x.size}\nmean={np.mean(x):.3g}\nmedian={np.median(x):.3g}", transform=ax.transAxes,
                    ha="right", va="top", fontsize=7, bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.7", alpha=0.9))  # fmt: skip
            if r == 0:
                ax.set_title(sec, fontsize=10)
            if c == 0:
                ax.set_ylabel(f"{name}\n#pairs", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
    fig.tight_layout()
    t = ["<table><tr><th class='l'>section</th><th>pairs</th><th>mean var (chosen)</th><th>median var (chosen)</th>"
         + ("<th>mean var (margin)</th><th>members split on the sign</th>" if v.get("var_margin") is not None else "") + "</tr>"]
    for sec, st in sorted((v.get("summary") or {}).items(), key=lambda kv: secs.index(kv[0]) if kv[0] in secs else len(secs)):
        t.append(f"<tr><td class='l'>{_esc(sec)}</td><td>{st['n']}</td><td>{st['var_chosen']['mean']:.4g}</td><td>{st['var_chosen']['median']:.4g}</td>")
        if v.get("var_margin") is not None:
            t.append(f"<td>{st['var_margin']['mean']:.4g}</td><td>{100 * st['sign_disagreement']:.1f}%</td>")
        t.append("</tr>")
    return (f"<h2>Variance per section: {_esc(label)}</h2><p class='note'>{_esc(v.get('what', ''))}; per held-out pair, "
            f"one column per section (dashed: mean; values above the 99th percentile in the last bin).</p>"
            f"<img src='{fig_to_data_uri(fig)}'>" + "".join(t) + "</table>")


def pit_histogram_figure(results: dict[str, dict[str, Any]], groups: Sequence[str]) -> str | None:
    """Grid of randomized-PIT histograms (rows: set/attribute, columns: method) as a data
    URI, densities so a calibrated model is flat at 1; None when no result has PIT data
    (JSON written before the PIT was added)."""
    rows = [g for g in groups if any("pit_hist" in (rr.get(g) or {}) for rr in results.values())]
    if not rows:
        return None
    plt = _plt()
    methods = list(results)
    fig, axes = plt.subplots(len(rows), len(methods), figsize=(3.4 * len(methods), 1.9 * len(rows) + 0.4), squeeze=False)
    for i, g in enumerate(rows):
        for j, m in enumerate(methods):
            ax = axes[i][j]
            s = results[m].get(g) or {}
            if "pit_hist" not in s:
                ax.axis("off")
                continue
            edges = np.asarray(s.get("pit_bins") or np.linspace(0, 1, len(s["pit_hist"]) + 1), float)
            w = np.diff(edges)
            ax.bar(edges[:-1], np.asarray(s["pit_hist"], float) / w, width=w, align="edge", color="#7aa6d6", edgecolor="white")
            if s.get("pit_hist_expected"):
                ax.stairs(np.asarray(s["pit_hist_expected"], float) / w, edges, color="#c0392b", lw=1.2)
            ax.axhline(1.0, color="k", ls=":", lw=0.8)
            ax.set_xlim(0, 1)
            ax.tick_params(labelsize=7)
            ks = s.get("pit_ks")
            ax.set_title(f"{g[:28]} | {m[:22]}" + (f"\nKS {ks:.3f}, n {s.get('n_pit', '?')}" if ks is not None else ""), fontsize=7)
            if i == len(rows) - 1:
                ax.set_xlabel("PIT", fontsize=8)
    fig.tight_layout()
    return fig_to_data_uri(fig)


def calibration_section(res: dict[str, Any]) -> str:
    plt = _plt()
    results = res["results"]
    parts = [f"<h2>Distributional calibration (held-out multi-rater items)</h2><p class='note'>{_esc(res.get('metrics_note', ''))} "
             f"{_esc(res.get('scale', ''))}.</p>"]
    groups = sorted({g for r in results.values() for g in r})
    t = ["<table><tr><th class='l'>set / attribute</th><th class='l'>method</th><th>items</th><th>ratings</th><th>pinball</th>"
         "<th>CRPS</th><th>W1</th><th>|mean err|</th><th>cov 50</th><th>cov 80</th><th>cov 90</th><th>rho(spread, rater sd)</th>"
         "<th>rho(spread, rater entropy)</th><th>PIT KS</th><th>PIT W1</th><th>PIT chi2 w</th>"
         "<th>PIT cov 50</th><th>PIT cov 80</th><th>PIT cov 90</th></tr>"]

    def num(x: Any, p: int) -> str:
        return "n/a" if x is None else f"{x:.{p}f}"

    for g in groups:
        for m, rr in results.items():
            s = rr.get(g)
            if not s:
                continue
            rho = s.get("spread_spearman_std")
            t.append(
                f"<tr><td class='l'>{_esc(g)}</td><td class='l'>{_esc(m)}</td><td>{s['n_items']}</td><td>{s['n_ratings']}</td>"
                f"<td>{s['pinball']:.4f}</td><td>{s['crps']:.4f}</td><td>{s['w1']:.4f}</td><td>{s['mae_mean']:.4f}</td>"
                + "".join(f"<td>{s['coverage'][k]:.2f}</td>" for k in ("0.5", "0.8", "0.9"))
                + f"<td>{num(rho, 3)}</td><td>{num(s.get('spread_spearman_entropy'), 3)}</td>"
                + f"<td>{num(s.get('pit_ks'), 4)}</td><td>{num(s.get('pit_w1'), 4)}</td><td>{num(s.get('pit_hist_w'), 3)}</td>"
                + "".join(f"<td>{num(s.get('pit_coverage', {}).get(k), 2)}</td>" for k in ("0.5", "0.8", "0.9"))
                + "</tr>"
            )
    parts.append("".join(t) + "</table>")
    pit = pit_histogram_figure(results, groups)
    if pit:
        parts.append(
            "<h3>Randomized PIT histograms</h3><p class='note'>Bars: the randomized PIT Z = F(y-) + V (F(y) - F(y-)) of every "
            "(item, rater) pair, pooled per set/attribute (seeded V); line: the exact expected histogram (no "
            "randomness). Flat at 1 (dotted) = calibrated; U shape = overconfident (too narrow); hump = too wide; "
            "slope = biased mean. Where the prediction is continuous at a rating, Z = F(y) is not randomized, so a "
            f"continuous prediction of discrete ratings shows spikes.</p><img src='{pit}'>"
        )
    # reliability: nominal vs observed coverage, one panel per method, one line per group
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (m, rr) in zip(axes[0], results.items()):
        for k, g in enumerate(groups):
            s = rr.get(g)
            if not s:
                continue
            ps = sorted(float(p) for p in s["reliability"])
            ax.plot(ps, [s["reliability"][f"{p:g}"] for p in ps], "o-", ms=3, color=cmap(k % 10), label=g)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_title(m, fontsize=10)
        ax.set_xlabel("nominal central-interval level")
        ax.set_ylabel("share of raters inside")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    parts.append(f"<h3>Reliability (coverage) curves</h3><img src='{fig_to_data_uri(fig)}'>")
    # spread vs raters' spread
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.8), squeeze=False)
    for ax, (m, rr) in zip(axes[0], results.items()):
        for k, g in enumerate(groups):
            s = rr.get(g)
            if not s or "per_item" not in s:
                continue
            ax.scatter(s["per_item"]["rater_std"], s["per_item"]["pred_spread"], s=6, alpha=0.5, color=cmap(k % 10), label=g)
        ax.set_title(m, fontsize=10)
        ax.set_xlabel("raters' std")
        ax.set_ylabel("predicted q0.9 - q0.1")
    axes[0][0].legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    parts.append(f"<h3>Predicted spread vs the raters' spread, per item</h3><img src='{fig_to_data_uri(fig)}'>")
    return "".join(parts)


def table1_section(res: dict[str, Any]) -> str:
    md = res.get("markdown")
    parts = ["<h2>QRM vs baselines (benchmarks/table1.py)</h2>"]
    if res.get("note"):
        parts.append(f"<p class='note'>{_esc(res['note'])}</p>")
    if md:
        parts.append(markdown_table_to_html(md))
    if res.get("claims_markdown"):
        parts.append(markdown_blocks_to_html(res["claims_markdown"]))
    return "".join(parts)


def markdown_blocks_to_html(md: str) -> str:
    """The small markdown table1.py writes for its claims: '## ' headings, pipe tables, and
    paragraphs with **bold**, *italic* and `code` (escaped first, then marked up)."""
    import re

    out = []
    for block in re.split(r"\n\s*\n", md.strip()):
        if block.lstrip().startswith("|"):
            out.append(markdown_table_to_html(block))
        elif block.startswith("## "):
            out.append(f"<h3>{_esc(block[3:].strip())}</h3>")
        else:
            html = _esc(block)
            for pat, tag in ((r"\*\*(.+?)\*\*", "b"), (r"\*(.+?)\*", "i"), (r"`(.+?)`", "code")):
                html = re.sub(pat, rf"<{tag}>\1</{tag}>", html)
            out.append(f"<p class='note'>{html}</p>")
    return "".join(out)


def markdown_table_to_html(md: str) -> str:
    """Pipe-table markdown (as table1.py writes it) to an HTML table."""
    lines = [ln.strip() for ln in md.strip().splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return f"<pre>{_esc(md)}</pre>"
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    head, body = cells[0], [c for c in cells[2:]]
    out = ["<table><tr>" + "".join(f"<th class='{'l' if i < 2 else ''}'>{_esc(h)}</th>" for i, h in enumerate(head)) + "</tr>"]
    for row in body:
        out.append("<tr>" + "".join(f"<td class='{'l' if i < 2 else ''}'>{_esc(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    return "".join(out) + "</table>"


def build_report(inputs: Sequence[str | Path], title: str = "distrm evaluation report") -> str:
    """HTML from any mix of pairs / calibration / table1 JSON files (kind detected)."""
    body = []
    srcs = []
    for p in inputs:
        res = json.loads(Path(p).read_text(encoding="utf-8"))
        kind = res.get("kind")
        srcs.append(f"{_esc(p)} ({_esc(kind)})")
        if kind == "pairs":
            body.append(pairs_section(res))
        elif kind == "calibration":
            body.append(calibration_section(res))
        elif kind == "table1":
            body.append(table1_section(res))
        else:
            raise ValueError(f"{p}: unknown result kind {kind!r} (expected pairs, calibration or table1)")
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_esc(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1><p class='small'>from: {'; '.join(srcs)}</p>{''.join(body)}</body></html>"
    )


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def screenshot(html_path: str | Path, png_path: str | Path, width: int = 1200, height: int = 2400, timeout: int = 120) -> Path:
    """Render the report in headless Chromium (no network, throwaway profile)."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium not found (apt-get install -y chromium)")
    png_path = Path(png_path).resolve()
    with tempfile.TemporaryDirectory() as prof:
        cmd = [
            exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            f"--user-data-dir={prof}", f"--screenshot={png_path}", f"--window-size={width},{height}",
            Path(html_path).resolve().as_uri(),
        ]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)
    if not png_path.is_file():
        raise RuntimeError(f"chromium did not write {png_path}")
    return png_path
