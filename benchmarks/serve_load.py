"""Load test for ``distrm serve``: dynamic batching vs batching off, K concurrent clients.

    PYTHONPATH=src python benchmarks/serve_load.py --clients 16 --duration 10

For each mode the script starts a server subprocess on 127.0.0.1 (batched: --max-batch 64,
--max-wait-ms 5; unbatched: --max-batch 1), warms it up, then runs K concurrent clients,
each sending one request at a time (``POST /get_reward`` with ``--items`` pairs, as an RL
rollout worker would) until ``--duration`` seconds or ``--max-requests`` requests have
passed. It counts errors (non-200, wrong reward count, non-finite rewards, exceptions)
and lost responses (requests sent that never got an answer), which must both be 0.

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


async def load(url: str, pairs: list[tuple[str, str]], clients: int, items: int, duration: float, max_requests: int) -> dict[str, Any]:
    lat: list[float] = []
    sent = answered = errors = 0
    err_examples: list[str] = []
    stop_at = time.monotonic() + duration

    async def worker(cid: int, c: httpx.AsyncClient) -> None:
        nonlocal sent, answered, errors
        rng = random.Random(cid)
        while time.monotonic() < stop_at and sent < max_requests:
            batch = [pairs[rng.randrange(len(pairs))] for _ in range(items)]
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
        "error_examples": err_examples,
        "elapsed_s": round(elapsed, 3),
        "requests_per_s": round(answered / elapsed, 2),
        "items_per_s": round(answered * items / elapsed, 2),
        "latency_p50_ms": round(1000 * pct(lat, 50), 1),
        "latency_p99_ms": round(1000 * pct(lat, 99), 1),
    }


def run_mode(name: str, model: Path, max_batch: int, args: argparse.Namespace, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    port = free_port()
    cmd = [sys.executable, __file__, "--serve", str(model), str(port), str(max_batch), str(args.max_wait_ms), str(args.threads)]
    proc = subprocess.Popen(cmd, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() - t0 > 180:
                raise RuntimeError(f"{name} server did not start")
            time.sleep(0.2)
        asyncio.run(load(url, pairs, args.clients, args.items, 2.0, 10**9))  # warm-up, not recorded
        before = httpx.get(f"{url}/health").json()
        res = asyncio.run(load(url, pairs, args.clients, args.items, args.duration, args.max_requests))
        after = httpx.get(f"{url}/health").json()
        nb = after["batches"] - before["batches"]
        res.update(
            mode=name,
            max_batch=max_batch,
            backbone_calls=nb,
            mean_batch_items=round((after["items_scored"] - before["items_scored"]) / max(nb, 1), 2),
            largest_batch=after["largest_batch"],
        )
        return res
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


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
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "serve_load.json")
    args = ap.parse_args()
    if not 1 <= args.clients <= 256 or not 0 < args.duration <= 120:
        ap.error("--clients must be in 1..256 and --duration in (0, 120]")
    pairs = make_pairs(512)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_model(Path(tmp) / "model", args.dtype)
        results = [
            run_mode("batched", model, args.batched_max_batch, args, pairs),
            run_mode("unbatched", model, 1, args, pairs),
        ]
    b, u = results
    ratio = b["requests_per_s"] / u["requests_per_s"] if u["requests_per_s"] else math.nan
    print(f"{'mode':<10} {'max_batch':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>10} {'errors':>6} {'lost':>5}")
    for r in results:
        print(f"{r['mode']:<10} {r['max_batch']:>9} {r['requests_per_s']:>8.1f} {r['latency_p50_ms']:>8.1f} "
              f"{r['latency_p99_ms']:>8.1f} {r['mean_batch_items']:>10.1f} {r['errors']:>6} {r['lost']:>5}")
        for e in r["error_examples"]:
            print(f"  {r['mode']}: {e}")
    print(f"throughput ratio batched/unbatched at {args.clients} clients: {ratio:.2f}x")
    out = {
        "benchmark": "serve_load",
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
                    "load_avg_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "throughput_ratio": round(ratio, 2),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["errors"] == 0 and r["lost"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
