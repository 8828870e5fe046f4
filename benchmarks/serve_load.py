"""Load test for ``distrm serve``: dynamic batching vs batching off, K concurrent clients.

    PYTHONPATH=src python benchmarks/serve_load.py --clients 16 --duration 10

For each mode the script starts a server subprocess on 127.0.0.1 (batched: --max-batch 64,
--max-wait-ms 5; unbatched: --max-batch 1), warms it up, then runs K concurrent clients,
each sending one request at a time (``POST /get_reward`` with ``--items`` pairs, as an RL
rollout worker would) until ``--duration`` seconds or ``--max-requests`` requests have
passed. It counts errors (non-200, wrong reward count, non-finite rewards, exceptions)
and lost responses (requests sent that never got an answer), which must both be 0.

Every reward is also checked against the reward of its own pair computed locally
(the same text recovery and model, in this process): an answer off by more than float
rounding counts as mismatched, so a response routed to the wrong request cannot pass.

    PYTHONPATH=src python benchmarks/serve_load.py --replicas 1,2 --clients 16 --duration 20

``--replicas`` compares Ray Serve deployments (``distrm serve --replicas N --ray``, each
replica one torch thread and one Ray CPU) in the same run, after the single-process server
as a reference, and writes ``results/serve_load_replicas.json`` instead.

Why a subprocess server: clients in the server's process would share its GIL and distort
the latency it measures. Loopback only; everything is bounded in count and time.

The model is a saved DistributionalRewardModel on the real MiniLM backbone with seeded
random heads (3 attributes x 19 quantiles, learned gate) unless ``--model`` names one:
the backbone dominates the cost, not the heads. Workload: synthetic English prompts of
8-20 words and responses of 10-40 words (RL completions are short), fixed seed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent
WORDS = (
    "the model answer question reward policy because helpful honest short long clear wrong right maybe "
    "always never explain example number capital city river write poem story code function return value "
    "please thanks sorry think know people time year good bad first last other new great little own"
).split()


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    sent = lambda k: " ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + "."  # noqa: E731
    return [(sent(rng.randint(8, 20)) + "?", sent(rng.randint(10, 40))) for _ in range(n)]


def build_model(path: Path, dtype: str = "float32") -> Path:
    """Seeded random heads on the real MiniLM backbone (same recipe as the tests), in ``dtype``."""
    import torch

    from distrm.features.backbones import Backbone
    from distrm.distribution import default_levels
    from distrm.features import extract
    from distrm.heads.gate import GatingNetwork
    from distrm.models.qrm import DistributionalRewardModel, ModelConfig

    bb = Backbone.from_pretrained("minilm", dtype=dtype)
    d = int(torch.as_tensor(extract(bb, ["p"], ["r"], batch_size=1, progress=False).reward).shape[-1])
    g = torch.Generator().manual_seed(0)
    attrs = ["helpfulness", "correctness", "verbosity"]
    cfg = ModelConfig(backbone="minilm", feature_dim=d, attributes=attrs, levels=default_levels(19, torch.float64).tolist(),
                      gate_hidden=64, gate_n_hidden=2, backbone_identity=getattr(bb, "identity", None),
                      backbone_dtype=None if dtype == "float32" else dtype)
    torch.manual_seed(0)
    gate = GatingNetwork(d, len(attrs), 64, 2)
    gate.train()
    gate(torch.randn(128, d, generator=g))
    gate.eval()
    DistributionalRewardModel(cfg, torch.randn(3, 19, d, generator=g) * 0.2, torch.randn(3, 19, generator=g), gate).save_pretrained(path)
    return path


def expected_rewards(model_dir: Path, pairs: list[tuple[str, str]]) -> list[float]:
    """The ``/get_reward`` reward of each pair as sent (query = prompt + " " + response),
    computed here: the server's own text recovery, then ``model.score``."""
    from distrm.models.auto import AutoRewardModel
    from distrm.serve.app import RewardService, ServeConfig

    model = AutoRewardModel.from_pretrained(model_dir)
    service = RewardService(model, ServeConfig(warmup=False))
    recovered = [service.recover_item(p + " " + r, p, i, f"pair {i}")[0] for i, (p, r) in enumerate(pairs)]
    out = model.score([p for p, _ in recovered], [r for _, r in recovered], batch_size=64)
    return out.reward.risk("mean").tolist()


def serve_main(argv: list[str]) -> None:
    """Server subprocess: ``serve_load.py --serve MODEL PORT MAX_BATCH MAX_WAIT_MS THREADS``."""
    import uvicorn

    from distrm.serve.app import ServeConfig, load_app

    model, port, max_batch, wait_ms, threads = argv
    cfg = ServeConfig(max_batch=int(max_batch), max_wait_ms=float(wait_ms), threads=int(threads) or None)
    uvicorn.run(load_app(model, cfg), host="127.0.0.1", port=int(port), log_level="warning", access_log=False)


def _backbone_module() -> str:
    mod = sys.modules.get("distrm.features.backbones")
    if mod is None:
        return "not imported here (--model given)"
    return getattr(mod, "__file__", None) or "stand-in module without a file"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


MATCH_TOL = 1e-6


def matches(got: float, want: float) -> bool:
    """Equal up to float rounding (batch composition changes the padded forward slightly)."""
    return abs(got - want) <= MATCH_TOL * (1.0 + abs(want))


async def load(url: str, pairs: list[tuple[str, str]], clients: int, items: int, duration: float, max_requests: int,
               expected: list[float]) -> dict[str, Any]:
    lat: list[float] = []
    sent = answered = errors = mismatched = 0
    max_dev = 0.0  # largest |reward - expected| among answers that matched
    err_examples: list[str] = []
    stop_at = time.monotonic() + duration

    async def worker(cid: int, c: httpx.AsyncClient) -> None:
        nonlocal sent, answered, errors, mismatched, max_dev
        rng = random.Random(cid)
        while time.monotonic() < stop_at and sent < max_requests:
            idx = [rng.randrange(len(pairs)) for _ in range(items)]
            batch = [pairs[i] for i in idx]
            body = {"query": [p + " " + r for p, r in batch], "prompts": [p for p, _ in batch]}
            sent += 1
            t0 = time.perf_counter()
            try:
                r = await c.post("/get_reward", json=body)
            except Exception as e:  # no answer: counted as lost, not as an error
                if len(err_examples) < 3:
                    err_examples.append(f"{type(e).__name__}: {e}")
                continue
            answered += 1
            lat.append(time.perf_counter() - t0)
            ok = r.status_code == 200
            if ok:
                rw = r.json().get("rewards", [])
                ok = len(rw) == items and all(isinstance(x, float) and math.isfinite(x) for x in rw)
                if ok and not all(matches(x, expected[i]) for x, i in zip(rw, idx)):
                    mismatched += 1  # an answer, but not this request's
                    if len(err_examples) < 3:
                        err_examples.append(f"mismatch: got {rw}, expected {[expected[i] for i in idx]}")
                    continue
                if ok:
                    max_dev = max([max_dev] + [abs(x - expected[i]) for x, i in zip(rw, idx)])
            if not ok:
                errors += 1
                if len(err_examples) < 3:
                    err_examples.append(f"HTTP {r.status_code}: {r.text[:200]}")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(i, c) for i in range(clients)])
        elapsed = time.perf_counter() - t0
    return {
        "requests_sent": sent,
        "responses": answered,
        "lost": sent - answered,
        "errors": errors,
        "mismatched": mismatched,
        "max_abs_reward_deviation": max_dev,
        "error_examples": err_examples,
        "elapsed_s": round(elapsed, 3),
        "requests_per_s": round(answered / elapsed, 2),
        "items_per_s": round(answered * items / elapsed, 2),
        "latency_p50_ms": round(1000 * pct(lat, 50), 1),
        "latency_p99_ms": round(1000 * pct(lat, 99), 1),
    }


def server_command(model: Path, port: int, max_batch: int, args: argparse.Namespace, replicas: int | None) -> list[str]:
    """The server subprocess: this script's uvicorn server (``replicas`` None), or ``distrm
    serve --ray`` with ``replicas`` replicas of one torch thread and one Ray CPU each."""
    if replicas is None:
        return [sys.executable, __file__, "--serve", str(model), str(port), str(max_batch), str(args.max_wait_ms), str(args.threads)]
    return [sys.executable, "-c", "import sys; from distrm.cli import main; sys.exit(main())", "serve", str(model),
            "--ray", "--replicas", str(replicas), "--replica-cpus", "1", "--threads", str(args.threads or 1),
            "--ray-object-store-mb", "100", "--port", str(port), "--max-batch", str(max_batch),
            "--max-wait-ms", str(args.max_wait_ms), "--log-level", "warning"]


def run_mode(name: str, model: Path, max_batch: int, args: argparse.Namespace, pairs: list[tuple[str, str]],
             expected: list[float], replicas: int | None = None) -> dict[str, Any]:
    from distrm.serve.client import wait_until_up

    port = free_port()
    proc = subprocess.Popen(server_command(model, port, max_batch, args, replicas), env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        start_s = wait_until_up(url, 300, proc)
        asyncio.run(load(url, pairs, args.clients, args.items, 2.0, 10**9, expected))  # warm-up, not recorded
        before = httpx.get(f"{url}/health").json()
        res = asyncio.run(load(url, pairs, args.clients, args.items, args.duration, args.max_requests, expected))
        after = httpx.get(f"{url}/health").json()
        res.update(mode=name, max_batch=max_batch, replicas=replicas, start_s=round(start_s, 1))
        if replicas is None:  # behind Ray, /health is one replica's counters: no server-wide batch sizes
            nb = after["batches"] - before["batches"]
            res.update(backbone_calls=nb, mean_batch_items=round((after["items_scored"] - before["items_scored"]) / max(nb, 1), 2),
                       largest_batch=after["largest_batch"])
        return res
    finally:
        proc.terminate()  # SIGTERM: distrm serve --ray stops its replicas and its private Ray
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'mode':<10} {'max_batch':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>10} {'errors':>6} {'lost':>5} {'mismatch':>8}")
    for r in results:
        mb = r.get("mean_batch_items")
        print(f"{r['mode']:<10} {r['max_batch']:>9} {r['requests_per_s']:>8.1f} {r['latency_p50_ms']:>8.1f} "
              f"{r['latency_p99_ms']:>8.1f} {'-' if mb is None else f'{mb:.1f}':>10} {r['errors']:>6} {r['lost']:>5} {r['mismatched']:>8}")
        for e in r["error_examples"]:
            print(f"  {r['mode']}: {e}")


def confusable(values: list[float]) -> int:
    """Pairs whose reward another pair's reward matches within the tolerance: an answer
    swapped between two such pairs would go unnoticed, so their count is reported."""
    v = sorted(values)
    return sum(1 for i, x in enumerate(v) if any(0 <= j < len(v) and j != i and matches(v[j], x) for j in (i - 1, i + 1)))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve_main(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="saved model dir (default: seeded random heads on MiniLM)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (1..256)")
    ap.add_argument("--items", type=int, default=1, help="pairs per request")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per mode (max 120)")
    ap.add_argument("--max-requests", type=int, default=5000, help="request cap per mode")
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--batched-max-batch", type=int, default=64)
    ap.add_argument("--dtype", default="float32", help="backbone precision of the default model (bfloat16: AMX CPUs)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server (0 = torch default); 1 keeps a shared machine usable")
    ap.add_argument("--replicas", default=None,
                    help="compare Ray Serve deployments of these replica counts, e.g. 1,2 (after the single-process server)")
    ap.add_argument("--out", type=Path, default=None, help="JSON output (default results/serve_load.json, "
                    "results/serve_load_replicas.json with --replicas)")
    args = ap.parse_args()
    if not 1 <= args.clients <= 256 or not 0 < args.duration <= 120:
        ap.error("--clients must be in 1..256 and --duration in (0, 120]")
    try:
        replica_counts = [int(x) for x in args.replicas.split(",")] if args.replicas else []
    except ValueError:
        ap.error(f"--replicas must be comma-separated counts like 1,2, got {args.replicas!r}")
    if any(not 1 <= n <= 64 for n in replica_counts):
        ap.error("--replicas counts must be in 1..64")
    out_path = args.out or ROOT / "results" / ("serve_load_replicas.json" if replica_counts else "serve_load.json")
    pairs = make_pairs(512)
    load_at_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_model(Path(tmp) / "model", args.dtype)
        expected = expected_rewards(model, pairs)
        results = [run_mode("single" if replica_counts else "batched", model, args.batched_max_batch, args, pairs, expected)]
        if replica_counts:
            results += [run_mode(f"ray x{n}", model, args.batched_max_batch, args, pairs, expected, replicas=n)
                        for n in replica_counts]
        else:
            results.append(run_mode("unbatched", model, 1, args, pairs, expected))
    print_table(results)
    rate = {r["mode"]: r["requests_per_s"] for r in results}
    div = lambda a, b: round(rate[a] / rate[b], 2) if rate[b] else math.nan  # noqa: E731
    if replica_counts:
        ray = [r["mode"] for r in results[1:]]
        ratios = {f"{m} / {ray[0]}": div(m, ray[0]) for m in ray[1:]} | {f"{m} / single": div(m, "single") for m in ray}
    else:
        ratios = {"batched / unbatched": div("batched", "unbatched")}
    for k, v in ratios.items():
        print(f"throughput ratio {k} at {args.clients} clients: {v:.2f}x")
    n_conf = confusable(expected)
    print(f"mismatch check: |reward - expected| <= {MATCH_TOL:g} (1 + |expected|); largest deviation seen "
          f"{max(r['max_abs_reward_deviation'] for r in results):.1e}; {n_conf} of {len(pairs)} pairs have a reward "
          "another pair matches within the tolerance")
    out = {
        "benchmark": "serve_load_replicas" if replica_counts else "serve_load",
        "clients": args.clients,
        "items_per_request": args.items,
        "duration_s": args.duration,
        "max_wait_ms": args.max_wait_ms,
        "server_torch_threads": args.threads,
        "backbone_dtype": args.dtype,
        "endpoint": "/get_reward",
        "model": str(args.model) if args.model else "seeded random heads (3x19) on minilm",
        # which distrm.features.backbones produced the features (a file path, or a stand-in without one)
        "backbone_module": _backbone_module(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_at_start": load_at_start,
                    "load_avg_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "throughput_ratios": ratios,
        "mismatch_tolerance": f"{MATCH_TOL:g} * (1 + |expected|)",
        "confusable_pairs": n_conf,
        "results": results,
    }
    if not replica_counts:
        out["throughput_ratio"] = ratios["batched / unbatched"]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {out_path}")
    return 0 if all(r["errors"] == 0 and r["lost"] == 0 and r["mismatched"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
