"""GPU check: the CLI paths on random-weight SmolLM2-135M and Llama-3-8B architectures, and
the paper-scale quantile solver, in one run that writes one JSON.

Nothing in the project needs a GPU; this is the script to run when one is lent. Weights are
never carried: each architecture (``ARCHS`` of benchmarks/extract.py) is built with random
weights (seed 0) straight on the GPU, saved as a safetensors backbone folder with
SmolLM2's tokenizer, and then driven through the real command line.

Per architecture:

1. ``build``: the folder (bf16 random weights + tokenizer + chat template);
2. ``cli_packed``: ``python -m distrm extract --backbone DIR --data pairs.jsonl`` with the
   defaults: its log must say ``on cuda:0`` and ``packed batches`` (the fast path chosen
   automatically);
3. ``cli_padded``: the same with ``--packed off`` into another store: same feature identity;
4. ``compare``: the reward and prompt features both runs stored, against the naive Hugging
   Face forward in fp32 (one sequence at a time, no padding) of the same token ids on
   ``--ref-rows`` rows. Stated bf16 tolerance (per row, relative L2 error against the fp32
   reference): packed <= ``--bf16-rtol`` (0.05) and <= 1.5 x the padded bf16 path's own
   error + 0.01 (packing may not cost more precision than bf16 already does).

Then ``solver``: the paper-scale part of benchmarks/quantile_solver.py (60,000 rows x 4,096
features per attribute, 19 levels) on the GPU.

Here (no GPU): copy SmolLM2's tokenizer (a few MB) into .carry/, which the device tool
carries (weights are built there), and smoke-test the script itself on a tiny architecture:

    PYTHONPATH=src python benchmarks/gpu_check.py --prepare
    PYTHONPATH=src python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check_smoke.json

On the GPU machine (device tool, ``carry: [".carry"]``):

    PYTHONPATH=src python benchmarks/gpu_check.py --out $OUT/gpu_check.json

Each step's outcome, seconds and numbers go into the JSON; a failing step is recorded and
the others still run; the exit status is 0 only when every step passed.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
CARRIED_TOKENIZER = ROOT / ".carry" / "smollm2-tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
WORDS = ("the model reward answer question because people should water light energy system would every small large "
         "garden history music river number between important example problem science market city children "
         "language travel computer health simple careful reason").split()


def _archs() -> dict:
    """The architectures benchmarks/extract.py measures (one definition of each)."""
    spec = importlib.util.spec_from_file_location("bench_extract", Path(__file__).with_name("extract.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ARCHS


def prepare() -> None:
    from distrm.features.backbones import resolve_model_dir

    src = Path(resolve_model_dir("smollm2-135m"))
    CARRIED_TOKENIZER.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, CARRIED_TOKENIZER / name)
    print(f"tokenizer copied to {CARRIED_TOKENIZER} ({sum(f.stat().st_size for f in CARRIED_TOKENIZER.iterdir()) >> 10} KiB)")


def _tokenizer_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    if (CARRIED_TOKENIZER / "tokenizer.json").is_file():
        return CARRIED_TOKENIZER
    from distrm.features.backbones import resolve_model_dir

    return Path(resolve_model_dir("smollm2-135m"))


def write_pairs(path: Path, n: int, max_words: int, seed: int = 0) -> None:
    """Synthetic preference pairs (RewardBench JSONL fields) with varied lengths: the
    shared data does not travel to the GPU machine, and random weights need no real text."""
    rng = np.random.default_rng(seed)

    def text(lo, hi):
        return " ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi + 1)))) + "."

    with open(path, "w") as fh:
        for _ in range(n):
            fh.write(json.dumps({"prompt": text(4, max_words // 3), "chosen": text(2, max_words),
                                 "rejected": text(2, max_words)}) + "\n")


def build(arch: dict, tok_dir: Path, out: Path, dev: torch.device, dtype: torch.dtype, layers: int | None) -> dict:
    from transformers import AutoModel, AutoTokenizer, LlamaConfig

    tok = AutoTokenizer.from_pretrained(tok_dir)
    kw = {k: v for k, v in arch.items() if k != "model_type"}
    kw["vocab_size"] = max(kw["vocab_size"], len(tok))  # every token id must have an embedding
    if layers:
        kw["num_hidden_layers"] = layers
    cfg = LlamaConfig(**kw)
    torch.manual_seed(0)
    with torch.device(dev):
        model = AutoModel.from_config(cfg, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    for name in ("chat_template.jinja",):  # older tokenizer saves keep the template apart
        if (tok_dir / name).is_file() and not (out / name).is_file():
            shutil.copy2(tok_dir / name, out / name)
    del model
    return {"params": n_params, "layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size,
            "weights_gib": round(sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2**30, 2)}


def run_cli(args: list[str], env: dict, timeout: int) -> tuple[dict, str]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "distrm", *args], env=env, capture_output=True, text=True, timeout=timeout)
    secs = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"distrm {' '.join(args[:3])} exited {p.returncode}: {p.stderr[-1500:]}")
    line = next((ln for ln in p.stderr.splitlines() if re.search(r"rank \d+/\d+ .*backbone", ln)), "")
    return {"seconds": round(secs, 2), "log": line}, p.stderr


class _Cached:
    """Enough of a backbone for :func:`distrm.features.extract` to read a store whose texts
    are all there (anything missing would mean the CLI lost rows: an error)."""

    def __init__(self, identity: str, device: str):
        self.identity, self.name, self.device = identity, "cached", device

    def embed(self, *a, **k):
        raise RuntimeError("texts missing from the store the CLI wrote")


def stored(store: Path, identity: str, prompts, responses):
    from distrm.features import extract

    f = extract(_Cached(identity, "cpu"), prompts, responses, store=store, progress=False)
    return f.reward, f.prompt


@torch.inference_mode()
def naive_reference(folder: Path, dev: torch.device, max_length: int, prompts, responses, rows: int):
    """fp32, one sequence at a time, no padding, no mask: the definition."""
    from distrm.features.backbones import Backbone

    bb = Backbone.from_pretrained(str(folder), device=str(dev), dtype="float32", max_length=max_length, packed=False)
    idx, rew, pro = [], [], []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids, q, _ = bb._causal_ids(p, r)
        if q < 0:  # prompt cut: its feature comes from a separate pass; skip the row
            continue
        h = bb.model(input_ids=torch.tensor([ids], device=dev), use_cache=False).last_hidden_state[0]
        rew.append(h[len(ids) - 1].float().cpu().numpy())
        pro.append(h[q].float().cpu().numpy())
        idx.append(i)
        if len(idx) == rows:
            break
    del bb
    return idx, np.stack(rew), np.stack(pro)


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float((np.linalg.norm(a - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-12)).max())


def step(report: dict, name: str, fn):
    t = time.perf_counter()
    try:
        out = fn() or {}
        report[name] = {"ok": bool(out.pop("ok", True)), **out}
    except Exception as e:  # noqa: BLE001 -- one broken step must not lose the others
        report[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:3000], "trace": traceback.format_exc()[-2000:]}
    report[name]["seconds_total"] = round(time.perf_counter() - t, 2)
    print(json.dumps({name: report[name]}, default=str)[:2000], flush=True)
    return report[name]


def check_arch(name: str, arch: dict, a, dev: torch.device, work: Path, env: dict) -> dict:
    from distrm.data import registry

    rep: dict = {}
    folder, data = work / f"{name}-random", work / "pairs.jsonl"
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    layers = a.llama_layers if name == "llama3-8b" else None
    if not data.exists():
        write_pairs(data, a.rows, a.max_words)
    if not step(rep, "build", lambda: build(arch, _tokenizer_dir(a.tokenizer), folder, dev, dtype, layers))["ok"]:
        return rep
    common = ["extract", "--backbone", str(folder), "--data", str(data), "--kind", "pairs", "--max-length", str(a.max_length),
              "--batch-size", str(a.batch_size), "--no-progress"] + (["--device", "cpu"] if dev.type == "cpu" else [])
    runs = {}

    def cli(label, extra):
        store, js = work / f"store-{name}-{label}", work / f"{name}-{label}.json"
        shutil.rmtree(store, ignore_errors=True)
        out, _ = run_cli(common + ["--store", str(store), "--json", str(js)] + extra, env, a.timeout)
        res = json.loads(js.read_text())
        runs[label] = (store, res)
        texts = sum(j["computed"] for j in res["jobs"].values())
        secs = sum(j["seconds"] for j in res["jobs"].values())
        out.update(packed=res["packed"], device=res["device"], identity=res["backbone"], texts=texts,
                   extract_seconds=round(secs, 2), texts_per_s=round(texts / max(secs, 1e-9), 1))
        if dev.type == "cuda":
            want_packed = label == "packed"
            out["ok"] = res["device"] == "cuda:0" and res["packed"] is want_packed and "on cuda:0" in out["log"]
        return out

    step(rep, "cli_packed", lambda: cli("packed", []))
    step(rep, "cli_padded", lambda: cli("padded", ["--packed", "off"]))

    def compare():
        if set(runs) != {"packed", "padded"}:
            raise RuntimeError("a CLI run failed: nothing to compare")
        (s1, r1), (s2, r2) = runs["packed"], runs["padded"]
        pairs = registry.load_pairs(str(data)).records
        P, R = [p.prompt for p in pairs], [p.chosen for p in pairs]
        a_r, a_p = stored(s1, r1["backbone"], P, R)
        b_r, b_p = stored(s2, r2["backbone"], P, R)
        idx, ref_r, ref_p = naive_reference(folder, dev, a.max_length, P, R, a.ref_rows)
        out = {"same_identity": r1["backbone"] == r2["backbone"], "ref_rows": len(idx), "dtype": str(dtype).replace("torch.", ""),
               "packed_vs_padded_max_abs": float(max(np.abs(a_r - b_r).max(), np.abs(a_p - b_p).max()))}
        out["packed_rel_err"] = max(rel_err(a_r[idx], ref_r), rel_err(a_p[idx], ref_p))
        out["padded_rel_err"] = max(rel_err(b_r[idx], ref_r), rel_err(b_p[idx], ref_p))
        if dev.type == "cuda":
            out["tolerance"] = f"packed_rel_err <= {a.bf16_rtol} and <= 1.5 x padded_rel_err + 0.01"
            out["ok"] = (out["same_identity"] and out["packed_rel_err"] <= a.bf16_rtol
                         and out["packed_rel_err"] <= 1.5 * out["padded_rel_err"] + 0.01)
        else:  # fp32 on CPU: both batch paths are the definition up to float rounding
            out["tolerance"] = "max abs vs the naive fp32 forward < 1e-4"
            out["max_abs_vs_naive"] = float(max(np.abs(a_r[idx] - ref_r).max(), np.abs(a_p[idx] - ref_p).max()))
            out["ok"] = out["same_identity"] and out["max_abs_vs_naive"] < 1e-4
        return out

    step(rep, "compare", compare)
    shutil.rmtree(folder, ignore_errors=True)  # 16 GB for the 8B architecture
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return rep


def solver(a, dev: torch.device, work: Path, env: dict) -> dict:
    out_json = work / "solver.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quantile_solver.py"), "--device", dev.type, "--no-sklearn",
           "--skip-small", "--no-recovery", "--paper-attributes", str(a.solver_attributes), "--out", str(out_json)]
    if a.smoke:
        cmd += ["--paper-n", "2000", "--paper-d", "32", "--paper-solver", "ipm"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
    if p.returncode != 0:
        raise RuntimeError(f"quantile_solver.py exited {p.returncode}: {p.stderr[-1500:]}")
    paper = json.loads(out_json.read_text())["paper"]
    return {"paper": paper, "ok": paper.get("max_certified_gap", 1.0) < 1e-2}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepare", action="store_true", help="copy SmolLM2's tokenizer into .carry/ (here, before the device run)")
    ap.add_argument("--smoke", action="store_true", help="tiny architecture, few rows, CPU allowed: checks the script itself")
    ap.add_argument("--archs", default=None, help="comma list of benchmarks/extract.py ARCHS (default smollm2-135m,llama3-8b)")
    ap.add_argument("--llama-layers", type=int, default=None, help="layers of the Llama-3-8B architecture (default: all 32)")
    ap.add_argument("--rows", type=int, default=256, help="synthetic pairs (each: a chosen and a rejected text)")
    ap.add_argument("--max-words", type=int, default=600)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--ref-rows", type=int, default=32, help="rows checked against the naive fp32 forward")
    ap.add_argument("--bf16-rtol", type=float, default=0.05)
    ap.add_argument("--solver-attributes", type=int, default=2, help="attributes at paper scale (0 skips the solver)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: .carry/smollm2-tokenizer, else the alias)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per subprocess")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu_check_<gpu>.json)")
    a = ap.parse_args()
    if a.prepare:
        prepare()
        return 0
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type != "cuda" and not a.smoke:
        print("no CUDA device: this is the GPU check (use --smoke to test the script on a CPU)", file=sys.stderr)
        return 2
    if a.smoke:
        a.rows, a.max_words, a.max_length, a.ref_rows = min(a.rows, 8), min(a.max_words, 40), min(a.max_length, 128), 4
        a.solver_attributes = min(a.solver_attributes, 1)
    archs_all = _archs()
    names = (a.archs or ("tiny" if a.smoke else "smollm2-135m,llama3-8b")).split(",")
    from distrm.features import packing

    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    report = {"device": gpu, "torch": torch.__version__, "python": platform.python_version(),
              "varlen_kernel": packing._varlen()[0] is not None, "smoke": a.smoke, "argv": sys.argv[1:],
              "archs": {}, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="distrm-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in names:
        report["archs"][name] = check_arch(name, archs_all[name], a, dev, work, env)
    if a.solver_attributes:
        step(report, "solver", lambda: solver(a, dev, work, env))
    oks = [s["ok"] for r in report["archs"].values() for s in r.values()] + ([report["solver"]["ok"]] if "solver" in report else [])
    report["ok"] = all(oks)
    out = Path(a.out or ROOT / "benchmarks" / "results" / f"gpu_check_{re.sub(r'[^A-Za-z0-9]+', '_', gpu).lower()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"{'PASS' if report['ok'] else 'FAIL'}: {out}")
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
