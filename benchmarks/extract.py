"""Feature-extraction throughput: naive one-at-a-time loop vs our batched paths.

CPU, real weights, real text (UltraFeedback prompt + chosen response from the shared data):

    PYTHONPATH=src python benchmarks/extract.py --backbones minilm,smollm2-135m -n 128

GPU, random weights (the architecture's FLOPs without carrying its weights), random token
ids with lengths uniform in [64, 1024]:

    PYTHONPATH=src python benchmarks/extract.py --random-weights --arch smollm2-135m,llama3-8b

Paths compared (all bf16 on GPU, fp32 on CPU, ``torch.inference_mode``):

* ``naive``          batch 1, input order, plain HF forward per example (ArmoRM's stage-1 loop)
* ``ours`` (CPU)     ``Backbone.embed``: length-sorted right-padded batches (the library path)
* ``padded-eager``   length-sorted right-padded batches, eager attention (the reference)
* ``padded-sdpa``    the same with SDPA attention
* ``packed``         :mod:`distrm.features.packing`: sequences concatenated, varlen flash attention, no pad
* ``packed+fused``   packed, plus ``fuse_pointwise`` (compiled RMSNorm / MLP / rotary)
* ``packed+fused+proj`` also ``fuse_projections`` (one QKV GEMM, one gate-up GEMM per layer)

Tokens/s counts real (non-pad) tokens. Model FLOP utilisation = 2 x non-embedding params x
tokens/s / peak (H100 dense bf16 989 TFLOP/s); attention FLOPs are not counted, as in the
reference numbers. Writes ``benchmarks/results/extract_<device>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 tensor-core peak (SXM)
ARCHS = {
    "tiny": dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=1000),  # smoke tests only
    # SmolLM2-135M's config (as in the de-quantised GGUF)
    "smollm2-135m": dict(model_type="llama", hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, vocab_size=49152, rope_theta=100000.0,
                         max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True),
    # Meta-Llama-3-8B's config
    "llama3-8b": dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, intermediate_size=14336, vocab_size=128256, rope_theta=500000.0,
                      max_position_embeddings=8192, rms_norm_eps=1e-5),
}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev) -> float:
    sync(dev)
    t = time.perf_counter()
    fn()
    sync(dev)
    return time.perf_counter() - t


def non_embedding_params(model) -> int:
    """Parameters that cost FLOPs per token (2 each; attention scores not counted): the model
    FLOP count of both the GPU rows and the CPU roofline columns."""
    return sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()


# --------------------------------------------------------------------------- forward paths
@torch.inference_mode()
def run_naive(model, seqs, dev) -> None:
    for s in seqs:  # batch 1, no padding, input order
        model(input_ids=torch.tensor([s], device=dev), use_cache=False).last_hidden_state[0, -1].float().cpu()


@torch.inference_mode()
def run_padded(model, seqs, dev, batch_size: int) -> None:
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for s in range(0, len(order), batch_size):
        b = [seqs[i] for i in order[s : s + batch_size]]
        L = max(map(len, b))
        ids = torch.zeros(len(b), L, dtype=torch.long)
        mask = torch.zeros(len(b), L, dtype=torch.long)
        for j, x in enumerate(b):
            ids[j, : len(x)] = torch.tensor(x)
            mask[j, : len(x)] = 1
        lens = mask.sum(1).to(dev)
        h = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False).last_hidden_state
        h[torch.arange(len(b), device=dev), lens - 1].float().cpu()


def pack_batches(seqs, max_tokens: int) -> list[list[int]]:
    """Greedy token-budget batches in length order (similar lengths share a row, so
    the varlen kernel's tiles are balanced)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out, cur, n = [], [], 0
    for i in order:
        if cur and n + len(seqs[i]) > max_tokens:
            out.append(cur)
            cur, n = [], 0
        cur.append(i)
        n += len(seqs[i])
    return out + ([cur] if cur else [])


@torch.inference_mode()
def run_packed(model, seqs, dev, max_tokens: int) -> None:
    from distrm.features.packing import packed_last_hidden

    for b in pack_batches(seqs, max_tokens):
        h, cu = packed_last_hidden(model, [seqs[i] for i in b], dev)
        h[(cu[1:] - 1).long()].float().cpu()


# --------------------------------------------------------------------------- GPU / random weights
def bench_random(args) -> list[dict]:
    from transformers import AutoModel, LlamaConfig

    from distrm.features import packing

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None) if dev.type == "cuda" else None
    rows = []
    for arch in args.arch.split(","):
        cfg = LlamaConfig(**{k: v for k, v in ARCHS[arch].items() if k != "model_type"})
        torch.manual_seed(0)
        with torch.device(dev):
            model = AutoModel.from_config(cfg, dtype=dt, attn_implementation="sdpa").eval()
        n_params = non_embedding_params(model)
        rng = np.random.default_rng(0)
        lens = rng.integers(args.min_len, args.max_len + 1, size=args.n_seqs[arch] if isinstance(args.n_seqs, dict) else args.n_seqs)
        seqs = [rng.integers(0, cfg.vocab_size, size=int(n)).tolist() for n in lens]
        n_naive = max(8, len(seqs) // args.naive_fraction)
        fused_done: set[str] = set()
        for path in args.paths.split(","):
            label, _, mt = path.partition("@")
            max_tokens = int(mt) if mt else args.max_tokens
            if label.startswith("packed") and not (packing.available() or args.force_packed):
                continue
            data = seqs[:n_naive] if label == "naive" else seqs
            compile_s = None
            if label.startswith("packed"):
                packing.use_packed(model)
            if label in ("packed+fused", "packed+fused+proj") and label not in fused_done:
                try:
                    # cumulative: each fusion stays on for the rows after it (run them last)
                    t0 = time.perf_counter()
                    if label == "packed+fused":
                        packing.fuse_pointwise(model)
                    else:
                        packing.fuse_projections(model, compile=True)
                    fused_done.add(label)
                    run_packed(model, data[:32], dev, max_tokens)
                    run_packed(model, data[-64:], dev, max_tokens)
                    compile_s = time.perf_counter() - t0
                except Exception as e:  # noqa: BLE001
                    rows.append({"arch": arch, "path": path, "error": f"{type(e).__name__}: {e}"[:500]})
                    print(json.dumps(rows[-1]), flush=True)
                    continue
            attn = "eager" if label == "padded-eager" else packing.PACKED_ATTN if label.startswith("packed") else "sdpa"
            if label.startswith("packed"):
                packing.use_packed(model)
                fn = lambda s, mt=max_tokens: run_packed(model, s, dev, mt)  # noqa: E731
            else:
                model.set_attn_implementation(attn)
                fn = (lambda s: run_naive(model, s, dev)) if label == "naive" else (lambda s: run_padded(model, s, dev, args.batch_size))
            try:
                fn(data[: min(len(data), 16)])  # warm-up (kernels, allocator)
                secs = timed(lambda: fn(data), dev)
            except Exception as e:  # noqa: BLE001 -- one broken path must not lose the others' rows
                rows.append({"arch": arch, "path": path, "error": f"{type(e).__name__}: {e}"[:500]})
                print(json.dumps(rows[-1]), flush=True)
                continue
            tok = int(sum(map(len, data)))
            tps = tok / secs
            row = {"arch": arch, "path": path, "device": name, "dtype": str(dt).replace("torch.", ""), "n_seqs": len(data),
                   "tokens": tok, "seconds": round(secs, 3), "tokens_per_s": round(tps, 1), "non_embedding_params": n_params,
                   "tflops": round(2 * n_params * tps / 1e12, 1)}
            if peak:
                row["share_of_bf16_peak"] = round(2 * n_params * tps / peak, 4)
            if compile_s is not None:
                row["compile_s"] = round(compile_s, 1)
            if label.startswith("padded"):
                row["batch_size"] = args.batch_size
            if label.startswith("packed"):
                row["max_tokens"] = max_tokens
            rows.append(row)
            print(json.dumps(row), flush=True)
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------- CPU / real weights
def load_texts(n: int, data_dir: str | None):
    from distrm.data import registry

    pairs = registry.load_pairs("ultrafeedback", data_dir=data_dir).records
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(pairs))[:n]  # a random sample, so lengths are mixed as in real use
    return [pairs[i].prompt for i in pick], [pairs[i].chosen for i in pick]


@torch.inference_mode()
def naive_real(bb, prompts, responses) -> int:
    """Plain HF, one example at a time: the same features as ``Backbone.embed`` (causal: one
    pass, last token + assistant-start position, plus a prompt-only pass where truncation cut
    into the prompt, as the library does; encoder: pair pass + prompt pass)."""
    tok, model, L, n = bb.tokenizer, bb.model, bb.max_length, 0
    for p, r in zip(prompts, responses):
        if bb.kind == "causal":
            msgs = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
            text = tok.apply_chat_template(msgs + [{"role": "assistant", "content": r}], tokenize=False)
            full = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            ids = full[:, -L:]
            h = model(input_ids=ids.to(bb.device), use_cache=False).last_hidden_state[0]
            h[-1].float().cpu()
            n += ids.shape[1]
            if full.shape[1] > L:  # the cut reached into the prompt: its feature needs its own pass
                ptext = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
                pids = tok(ptext, add_special_tokens=False, return_tensors="pt")["input_ids"][:, -L:]
                model(input_ids=pids.to(bb.device), use_cache=False).last_hidden_state[0, -1].float().cpu()
                n += pids.shape[1]
        else:
            text = p if isinstance(p, str) else "\n".join(f"{m['role']}: {m['content']}" for m in p)
            for enc in (tok(text, r, truncation="longest_first", max_length=L, return_tensors="pt"),
                        tok(text, truncation=True, max_length=L, return_tensors="pt")):
                model(**{k: v.to(bb.device) for k, v in enc.items()}).last_hidden_state[0].mean(0).cpu()
                n += enc["input_ids"].shape[1]
    return n


def matmul_peak(dtype: torch.dtype, shapes=((4096, 576, 1536), (4096, 1536, 576), (2048, 2048, 2048)), reps: int = 5) -> float:
    """Best measured FLOP/s of one ``torch.mm`` on this CPU, over shapes like a batch of tokens
    times a layer's weight (SmolLM2's MLP) and a square GEMM: the roofline that any forward
    pass in ``dtype`` stays under. Measured, not taken from a spec sheet, so it holds on
    whatever CPU (AMX or not) the benchmark runs on."""
    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        torch.mm(a, b)  # warm-up (oneDNN kernel selection)
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * m * k * n / (time.perf_counter() - t))
    return best




def bench_real(args) -> list[dict]:
    """Naive: plain HF fp32 (the default a user gets), batch 1, on every K-th example (same
    length mix as the whole set). Ours: ``Backbone.embed`` in each of ``--dtypes``, all examples."""
    from distrm.features.backbones import Backbone, parse_dtype

    torch.set_num_threads(args.threads) if args.threads else None
    prompts, responses = load_texts(args.n, args.data_dir)
    k = max(1, args.naive_fraction)
    rows = []
    peaks = {dt: matmul_peak(parse_dtype(dt)) for dt in args.dtypes.split(",")}
    print(json.dumps({"matmul_peak_gflops": {dt: round(v / 1e9, 1) for dt, v in peaks.items()}}), flush=True)
    for name in args.backbones.split(","):
        naive_tps = None
        for dtype, mbt in [(dt, m) for dt in args.dtypes.split(",") for m in args.max_batch_tokens.split(",")]:
            bb = Backbone.from_pretrained(name, max_length=args.max_length, dtype=dtype,
                                          max_batch_tokens=mbt if mbt == "auto" else int(mbt))
            dev = bb.device
            bb.embed(prompts[:4], responses[:4], batch_size=4)  # warm-up
            if naive_tps is None:
                if bb.dtype != torch.float32:
                    raise SystemExit("--dtypes must start with float32 (the naive loop's precision)")
                naive_tps = 0.0
                for _ in range(args.repeats):  # best of N: this box's neighbours are noisy
                    t = time.perf_counter()
                    n = naive_real(bb, prompts[::k], responses[::k])
                    naive_tps = max(naive_tps, n / (time.perf_counter() - t))
            box = []
            t_ours = min(timed(lambda: box.append(bb.embed(prompts, responses, batch_size=args.batch_size)), dev)
                         for _ in range(args.repeats))
            n_ours = box[0].n_tokens
            row = {"backbone": name, "device": str(dev), "dtype": str(bb.dtype).replace("torch.", ""),
                   "threads": torch.get_num_threads(), "n_examples": len(prompts), "batch_size": args.batch_size,
                   "max_batch_tokens": bb.max_batch_tokens, "max_length": bb.max_length,
                   "naive_examples": len(prompts[::k]), "naive_dtype": "float32", "repeats": args.repeats,
                   "naive_tokens_per_s": round(naive_tps, 1), "ours_tokens_per_s": round(n_ours / t_ours, 1),
                   "ours_tokens": n_ours, "ours_seconds": round(t_ours, 2)}
            row["speedup"] = round(row["ours_tokens_per_s"] / row["naive_tokens_per_s"], 2)
            # the roofline: model FLOP/s of each path vs the measured matmul peak in its precision
            fpt = 2.0 * non_embedding_params(bb.model)
            row["model_gflop_per_token"] = round(fpt / 1e9, 4)
            row["naive_gflops"] = round(fpt * naive_tps / 1e9, 1)
            row["ours_gflops"] = round(fpt * row["ours_tokens_per_s"] / 1e9, 1)
            row["fp32_matmul_peak_gflops"] = round(peaks["float32"] / 1e9, 1)
            row["ours_matmul_peak_gflops"] = round(peaks[dtype] / 1e9, 1)
            row["naive_share_of_fp32_peak"] = round(fpt * naive_tps / peaks["float32"], 3)
            row["ours_share_of_peak"] = round(fpt * row["ours_tokens_per_s"] / peaks[dtype], 3)
            # no path in this precision can beat the naive loop by more than this
            row["max_speedup_at_peak"] = round(peaks[dtype] / (fpt * naive_tps), 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    rows = [r for r in rows if "error" not in r]
    if rows and "path" in rows[0]:
        head = ["arch", "path", "tokens", "seconds", "tokens/s", "TFLOP/s", "% bf16 peak"]
        lines = [[r["arch"], r["path"], r["tokens"], r["seconds"], f"{r['tokens_per_s']:,.0f}", r["tflops"],
                  f"{100 * r['share_of_bf16_peak']:.1f}" if "share_of_bf16_peak" in r else "-"] for r in rows]
    else:
        head = ["backbone", "naive fp32 tok/s", "naive % fp32 peak", "ours dtype", "tokens/batch", "ours tok/s", "ours % peak",
                "speedup", "ceiling (peak / naive)"]
        lines = [[r["backbone"], f"{r['naive_tokens_per_s']:,.0f}", f"{100 * r['naive_share_of_fp32_peak']:.0f}", r["dtype"],
                  r["max_batch_tokens"], f"{r['ours_tokens_per_s']:,.0f}", f"{100 * r['ours_share_of_peak']:.0f}", f"{r['speedup']}x",
                  f"{r['max_speedup_at_peak']}x"] for r in rows]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(out + ["| " + " | ".join(map(str, x)) + " |" for x in lines])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbones", default="minilm,smollm2-135m", help="real-weights mode: aliases to time")
    p.add_argument("-n", type=int, default=128, help="real-weights mode: examples")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtypes", default="float32,bfloat16", help="real-weights mode: our precisions (first: float32)")
    p.add_argument("--max-batch-tokens", default="auto", help="real-weights mode: padded-token budgets per batch to time, "
                   "comma-separated ('auto': the library default)")
    p.add_argument("--repeats", type=int, default=1, help="real-weights mode: time each path N times, keep the best")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    p.add_argument("--naive-fraction", type=int, default=4, help="the naive loop times 1/K of the data (it is slow)")
    p.add_argument("--random-weights", action="store_true", help="from_config architectures, random token ids")
    p.add_argument("--arch", default="smollm2-135m,llama3-8b", help=f"random-weights mode: {', '.join(ARCHS)}")
    p.add_argument("--n-seqs", type=int, default=0, help="random-weights mode: sequences (0: 4096 small / 768 for 8B)")
    p.add_argument("--min-len", type=int, default=64)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--max-tokens", type=int, default=32768, help="packed: tokens per packed row")
    p.add_argument("--paths", default="naive,padded-eager,padded-sdpa,packed,packed+fused,packed+fused+proj",
                   help="random-weights mode, in this order (fusions are cumulative and process-wide: one arch per "
                        "process for clean rows); 'PATH@N' = N tokens per packed row")
    p.add_argument("--force-packed", action="store_true", help="time the packed path even without the GPU kernel")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.random_weights:
        if not args.n_seqs:
            args.n_seqs = {"smollm2-135m": 4096, "llama3-8b": 768}
        rows = bench_random(args)
        dev = "gpu" if torch.cuda.is_available() else "cpu"
    else:
        rows = bench_real(args)
        dev = "cpu" if not torch.cuda.is_available() else "gpu"
    print(table(rows))
    out = Path(args.out or Path(__file__).parent / "results" / f"extract_{dev}{'_random' if args.random_weights else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": "PYTHONPATH=src python benchmarks/extract.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "torch": torch.__version__, "python": platform.python_version()}
    try:
        import transformers

        meta["transformers"] = transformers.__version__
    except ImportError:
        pass
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
