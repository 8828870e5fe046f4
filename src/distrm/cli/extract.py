"""``distrm extract``: compute a dataset's backbone features into the feature store ahead of
training/evaluation, so those steps (and reruns, other seeds) cost no backbone time.

    distrm extract --backbone minilm --data hh-rlhf
    distrm extract --backbone smollm2-135m --data ultrafeedback --kind rated --limit 500
    accelerate launch --num_processes 2 --cpu src/distrm/cli/__init__.py extract --backbone minilm --data hh-rlhf

Pairs are extracted for the chosen and the rejected response, rated sets for each response.
Texts already in the store are skipped; a killed run resumes where its shards stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="compute backbone features of a dataset into the feature store",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="minilm", help="alias (minilm, smollm2-135m, gemma3-270m), HF name or local path")
    p.add_argument("--data", required=True, metavar="NAME|PATH", help="registry name ('distrm data list'), data file, or Hub id")
    p.add_argument("--data-dir", default=None, help="shared data folder (default: $DISTRM_DATA_DIR or ../shared/data)")
    p.add_argument("--kind", choices=["pairs", "rated", "all"], default="all", help="which records to extract (default: all the set has)")
    p.add_argument("--store", default=".cache/distrm/features", help="feature store directory")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=1024, help="texts per store shard (the unit a killed run resumes at)")
    p.add_argument("--max-length", type=int, default=512, help="tokens; longer inputs are truncated and counted")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32 or bfloat16 (fast on AMX CPUs)")
    p.add_argument("--limit", type=int, default=None, help="first N records of each kind (quick runs)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the counts as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _jobs(args: argparse.Namespace) -> list[tuple[str, list, list[str]]]:
    """(label, prompts, responses) per thing to extract, from the data registry."""
    from distrm.data import registry

    kinds = registry.resolve(args.data, data_dir=args.data_dir).kinds
    want = [k for k in ("pairs", "rated") if k in kinds and args.kind in (k, "all")]
    if not want:
        raise ValueError(f"{args.data!r} has no {args.kind if args.kind != 'all' else 'pairs or rated'} records (it has: {', '.join(kinds)})")
    jobs = []
    if "pairs" in want:
        recs = registry.load_pairs(args.data, data_dir=args.data_dir).records[: args.limit]
        prompts = [r.prompt for r in recs]
        jobs += [("pairs/chosen", prompts, [r.chosen for r in recs]), ("pairs/rejected", prompts, [r.rejected for r in recs])]
    if "rated" in want:
        recs = registry.load_rated(args.data, data_dir=args.data_dir).records[: args.limit]
        jobs.append(("rated", [r.prompt for r in recs], [r.response for r in recs]))
    return jobs


def run(args: argparse.Namespace) -> int:
    from distrm.features.backbones import Backbone
    from distrm.features import extract

    main_process = int(os.environ.get("RANK", "0")) == 0
    bb = Backbone.from_pretrained(args.backbone, device=args.device, dtype=args.dtype, max_length=args.max_length)
    report = {"backbone": bb.identity, "store": args.store, "data": args.data, "jobs": {}}
    for label, prompts, responses in _jobs(args):
        t0 = time.perf_counter()
        f = extract(bb, prompts, responses, store=args.store, batch_size=args.batch_size, shard_size=args.shard_size,
                    progress=not args.no_progress and main_process)
        secs = time.perf_counter() - t0
        report["jobs"][label] = {"n": len(prompts), "computed": f.n_computed, "cached": f.n_cached,
                                 "truncated": f.n_truncated, "seconds": round(secs, 2), "dim": int(f.reward.shape[-1])}
        if main_process:
            print(f"{label}: {len(prompts)} items, {f.n_computed} computed, {f.n_cached} from cache, "
                  f"{f.n_truncated} truncated at {bb.max_length} tokens, {secs:.1f} s, features [{len(prompts)}, {f.reward.shape[-1]}]")
    if main_process:
        print(f"store: {args.store}  backbone identity: {bb.identity}")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(report, fh, indent=1)
    return 0
