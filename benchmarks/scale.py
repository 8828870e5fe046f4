"""Memory and throughput of training from a streamed feature store as the data grows (issue 16).

    PYTHONPATH=src python benchmarks/scale.py --sizes 50000,200000   # -> results/scale.json

For each size N: a child process writes a synthetic bfloat16 feature store (d = 4096) for N
preference pairs (chosen and rejected rows, reward + prompt features, through
``FeatureStore.write_shard`` as extraction would), then a second child process trains the
gate from it the way ``distrm train`` would at scale: ``extract(..., stream=True)`` (all
cached: the backbone is never run), per-attribute means of chosen and rejected computed over
blocks of reward rows with fixed synthetic quantile heads, then ``train_gate`` on the streamed
prompt features. Separately, quantile heads for one attribute are fitted (ADMM,
``block_rows``) on 60k rated rows x 4096 read from a store. Each step runs in its own process
and its peak RSS is that process's ``ru_maxrss`` (``os.wait4``), so sizes do not contaminate
each other. The stores go under ``--workdir`` and are deleted after each size (``--keep``
keeps them); a size whose store does not fit the free disk is skipped and reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
IDENTITY = "synthetic-scale-benchmark|d={d}"


class StoredOnly:
    """Stands in for a backbone whose features are all in the store: ``extract`` needs its
    identity and name only; running it means the store is incomplete (a benchmark bug)."""

    name = "synthetic"

    def __init__(self, d: int) -> None:
        self.identity = IDENTITY.format(d=d)

    def embed(self, *a, **k):
        raise RuntimeError("the synthetic store is incomplete: a text had to be extracted")


def texts(kind: str, n: int) -> tuple[list[str], list[str], list[str]]:
    if kind == "pairs":
        return ([f"prompt {i}: how do I do task {i}?" for i in range(n)], [f"chosen answer {i}" for i in range(n)],
                [f"rejected answer {i}" for i in range(n)])
    return [f"rated prompt {i}" for i in range(n)], [f"rated response {i}" for i in range(n)], []


def store_bytes(kind: str, n: int, d: int) -> int:
    rows = 2 * n if kind == "pairs" else n
    return rows * (2 * d * 2 + 32)  # reward + prompt bf16, keys


# ------------------------------------------------------------------ children
def build(args) -> dict:
    """Write the synthetic store: pairs (prompt feature shared by chosen and rejected, reward
    features = prompt signal + noise, chosen shifted along a fixed direction), or rated rows."""
    from distrm.features.store import FeatureStore, text_key

    d, n = args.d, args.n
    fs = FeatureStore(args.store, IDENTITY.format(d=d), "bfloat16")
    rng = np.random.default_rng(args.seed)
    direction = rng.standard_normal(d, dtype=np.float32)
    direction /= np.linalg.norm(direction)
    t0 = time.perf_counter()
    P, C, R = texts(args.kind, n)
    for s in range(0, n, args.shard_rows):
        e = min(n, s + args.shard_rows)
        b = e - s
        prompt = rng.standard_normal((b, d), dtype=np.float32)
        if args.kind == "pairs":
            rc = 0.5 * prompt + rng.standard_normal((b, d), dtype=np.float32) + 0.3 * direction
            rr = 0.5 * prompt + rng.standard_normal((b, d), dtype=np.float32)
            keys = [text_key(P[i], C[i]) for i in range(s, e)] + [text_key(P[i], R[i]) for i in range(s, e)]
            fs.write_shard(keys, np.concatenate([rc, rr]), np.concatenate([prompt, prompt]))
        else:
            reward = 0.5 * prompt + rng.standard_normal((b, d), dtype=np.float32)
            fs.write_shard([text_key(P[i], C[i]) for i in range(s, e)], reward, prompt)
    return {"build_s": time.perf_counter() - t0, "bytes_on_disk": sum(f.stat().st_size for f in fs.dir.iterdir())}


def synthetic_heads(d: int, M: int, seed: int):
    """Fixed random quantile heads (M attributes x 19 levels): what the gate's attribute means
    come from; their values do not matter for memory or speed."""
    import torch

    from distrm.distribution import default_levels
    from distrm.heads.quantile import QuantileHeads

    g = torch.Generator().manual_seed(seed)
    levels = default_levels(19, torch.float64)
    coef = torch.randn(M, 1, d, generator=g, dtype=torch.float64) / (4 * d**0.5) * torch.ones(1, len(levels), 1)
    intercept = 0.5 + 0.1 * torch.special.ndtri(levels)[None, :].expand(M, -1)
    return QuantileHeads.from_state_dict({"coef": coef, "intercept": intercept.contiguous(), "levels": levels})


def gate(args) -> dict:
    import torch

    from distrm.config import GateConfig
    from distrm.features.store import extract
    from distrm.heads.gate import GatingNetwork
    from distrm.training.gate import train_gate

    P, C, R = texts("pairs", args.n)
    bb = StoredOnly(args.d)
    t0 = time.perf_counter()
    kw = dict(store=args.store, store_dtype="bfloat16", progress=False, stream=True)
    fc, fr = extract(bb, P, C, **kw), extract(bb, P, R, **kw)
    t_gather = time.perf_counter() - t0
    del P, C, R
    heads = synthetic_heads(args.d, args.attributes, args.seed)
    t0 = time.perf_counter()
    means = []
    for f in (fc, fr):  # [n, M] per side, over blocks of reward rows
        means.append(torch.cat([heads.predict_distribution(b).mean().float() for _, b in f.reward.blocks(args.block_rows)]))
    t_means = time.perf_counter() - t0
    torch.manual_seed(args.seed)
    net = GatingNetwork(args.d, args.attributes)
    cfg = GateConfig(epochs=args.epochs)  # paper settings: AdamW lr 3e-4, batch 1024, hidden 1024 x 3
    t0 = time.perf_counter()
    log = train_gate(net, fc.prompt, means[0], means[1], cfg, seed=args.seed, progress=False, block_rows=args.block_rows)
    t_train = time.perf_counter() - t0
    return {"gather_s": t_gather, "means_s": t_means, "train_s": t_train, "epochs": args.epochs,
            "pairs_per_s": args.n * args.epochs / t_train,
            "pairs_per_s_end_to_end": args.n * args.epochs / (t_gather + t_means + t_train),
            "final_epoch": log[-1]}


def heads(args) -> dict:
    import warnings

    import torch

    from distrm.features.store import extract
    from distrm.heads.quantile import QuantileHeads

    P, C, _ = texts("rated", args.n)
    t0 = time.perf_counter()
    f = extract(StoredOnly(args.d), P, C, store=args.store, store_dtype="bfloat16", progress=False, stream=True)
    t_gather = time.perf_counter() - t0
    # one attribute, one rating per row: a sparse linear signal on the reward features, on a 1..5 scale
    rng = np.random.default_rng(args.seed)
    beta = np.zeros(args.d)
    beta[rng.choice(args.d, 32, replace=False)] = rng.normal(size=32) * 0.3
    y = np.concatenate([b.numpy() @ beta for _, b in _blocks(f.reward, args.block_rows)]) + rng.normal(size=args.n)
    y = np.clip(np.round(3 + y), 1, 5)
    q = QuantileHeads(alpha=args.alpha, solver="admm", max_iter=args.heads_max_iter, block_rows=args.block_rows)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # unconverged at the capped max_iter: reported below
        q.fit(f.reward, y[:, None])
    t_fit = time.perf_counter() - t0
    return {"gather_s": t_gather, "fit_s": t_fit, "rows_per_s": args.n / t_fit, "n_iter": int(q.n_iter_[0]),
            "levels": int(q.coef_.shape[1]),
            "duality_gap_max": float(q.duality_gap_.max()), "nonzero_median": float(q.n_nonzero().double().median()),
            "torch_threads": torch.get_num_threads()}


def _blocks(view, block_rows):
    import torch

    for s, b in view.blocks(block_rows):
        yield s, torch.from_numpy(b).double()


# ------------------------------------------------------------------ driver
def child(step: str, args, **over) -> dict:
    """Run one step in a fresh interpreter; its result and its own peak RSS."""
    cmd = [sys.executable, __file__, "--child", step, "--d", str(args.d), "--seed", str(args.seed),
           "--block-rows", str(args.block_rows), "--epochs", str(args.epochs), "--attributes", str(args.attributes),
           "--alpha", str(args.alpha), "--heads-max-iter", str(args.heads_max_iter), "--shard-rows", str(args.shard_rows)]
    for k, v in over.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    out_file = Path(args.workdir) / f"result-{os.getpid()}.json"
    cmd += ["--out", str(out_file)]
    proc = subprocess.Popen(cmd)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"scale.py: step {step} {over} failed with exit code {proc.returncode}")
    res = json.loads(out_file.read_text())
    out_file.unlink()
    res["peak_rss_bytes"] = ru.ru_maxrss * 1024  # Linux: kilobytes
    return res


def run_jobs(args, work: Path, jobs: list, rows: list, skipped: list) -> None:
    """Build each store, train from it in a child process, delete it (unless --keep)."""
    for kind, n in jobs:
        store = work / f"{kind}-{n}"
        need = store_bytes(kind, n, args.d)
        free = shutil.disk_usage(work).free
        if need * 1.1 + (1 << 30) > free:
            print(f"skipping {kind} n={n}: needs {gib(need)}, {gib(free)} free under {work}", flush=True)
            skipped.append({"kind": kind, "n": n, "needs_bytes": need, "free_bytes": free})
            continue
        print(f"[{kind} n={n}] building the bf16 store ({gib(need)}) ...", flush=True)
        b = child("build", args, kind=kind, n=n, store=store)
        print(f"[{kind} n={n}] built in {b['build_s']:.0f} s; training ...", flush=True)
        try:
            r = child("gate" if kind == "pairs" else "heads", args, n=n, store=store)
        finally:
            if not args.keep:
                shutil.rmtree(store, ignore_errors=True)
        rows.append({"kind": kind, "n": n, "d": args.d, "store_dtype": "bfloat16", "bytes_on_disk": b["bytes_on_disk"],
                     "build_s": b["build_s"], "build_peak_rss_bytes": b["peak_rss_bytes"], **r})
        print(f"[{kind} n={n}] peak RSS {gib(r['peak_rss_bytes'])}", flush=True)


def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="50000,200000", help="preference pairs per gate run (comma-separated)")
    ap.add_argument("--heads-rows", type=int, default=60000, help="rated rows for the heads fit (0: skip)")
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--attributes", type=int, default=5, help="attributes the gate mixes")
    ap.add_argument("--epochs", type=int, default=1, help="gate epochs")
    ap.add_argument("--block-rows", type=int, default=8192)
    ap.add_argument("--shard-rows", type=int, default=8192, help="pairs per store shard when building")
    ap.add_argument("--alpha", type=float, default=0.003)
    ap.add_argument("--heads-max-iter", type=int, default=100, help="ADMM iterations (capped: throughput, not convergence)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp/distrm-scale")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic stores")
    ap.add_argument("--json", default=str(HERE / "results" / "scale.json"))
    ap.add_argument("--child", choices=["build", "gate", "heads"], help=argparse.SUPPRESS)
    ap.add_argument("--kind", default="pairs", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        res = {"build": build, "gate": gate, "heads": heads}[args.child](args)
        Path(args.out).write_text(json.dumps(res))
        return

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    jobs = [("pairs", n) for n in sizes] + ([("rated", args.heads_rows)] if args.heads_rows else [])
    try:
        run_jobs(args, work, jobs, rows, skipped)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'step':<7}{'rows':>9}{'on disk':>12}{'peak RSS':>12}{'build RSS':>12}{'throughput':>24}{'time s':>9}")
    for r in rows:
        tp = f"{r['pairs_per_s']:.0f} pairs/s" if r["kind"] == "pairs" else f"{r['rows_per_s']:.0f} rows/s"
        t = r["train_s"] if r["kind"] == "pairs" else r["fit_s"]
        step = "gate" if r["kind"] == "pairs" else "heads"
        print(f"{step:<7}{r['n']:>9}{gib(r['bytes_on_disk']):>12}{gib(r['peak_rss_bytes']):>12}"
              f"{gib(r['build_peak_rss_bytes']):>12}{tp:>24}{t:>9.0f}")
    gate_rows = {r["n"]: r for r in rows if r["kind"] == "pairs"}
    checks = {}
    if 200000 in gate_rows:
        checks["gate_rss_200k_under_3GiB"] = gate_rows[200000]["peak_rss_bytes"] < 3 * 2**30
    if 50000 in gate_rows and 200000 in gate_rows:
        growth = gate_rows[200000]["peak_rss_bytes"] / gate_rows[50000]["peak_rss_bytes"] - 1
        checks["gate_rss_growth_50k_to_200k"] = growth
        checks["gate_rss_growth_under_20pct"] = growth < 0.2
        print(f"gate peak RSS 50k -> 200k pairs: {100 * growth:+.1f}%")
    for r in rows:
        if r["kind"] == "rated":
            print(f"heads: {r['n']} rows x {r['d']}, {r['levels']} levels, {r['n_iter']} ADMM iterations in {r['fit_s']:.0f} s "
                  f"(standardiser, Gram matrix and Cholesky included); certified gap at the cap {r['duality_gap_max']:.1e}")
    print("checks:", json.dumps(checks))
    out = {"argv": sys.argv[1:], "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
           "load_avg_end": os.getloadavg(), "rows": rows, "skipped": skipped, "checks": checks}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
