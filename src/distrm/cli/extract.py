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
from dataclasses import dataclass
from typing import Literal

from distrm.config import add_config_arguments, config_from_args


@dataclass
class ExtractConfig:
    """``distrm extract``."""

    backbone: str = "minilm"  # alias (minilm, smollm2-135m, gemma3-270m), HF name or local path
    revision: str | None = None  # Hub branch, tag or commit of the backbone (with a Hub id)
    data: str = ""  # registry name ('distrm data list'), data file, or Hub id
    data_dir: str | None = None  # shared data folder (default: $DISTRM_DATA_DIR or ../shared/data)
    kind: Literal["pairs", "rated", "all"] = "all"  # which records to extract (default: all the set has)
    store: str = ".cache/distrm/features"  # feature store directory
    batch_size: int = 32
    shard_size: int = 1024  # texts per store shard (the unit a killed run resumes at)
    max_length: int = 512  # tokens; longer inputs are truncated and counted
    dtype: Literal["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU; bfloat16 is fast on AMX CPUs
    limit: int | None = None  # first N records of each kind (quick runs)
    device: str | None = None  # default: cuda if available, else cpu
    json: str | None = None  # also write the counts as JSON to this file
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("give --data (a registry name, a data file or a Hub id)")
        for name in ("batch_size", "shard_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="compute backbone features of a dataset into the feature store",
                       description=__doc__.split("\n\n")[0])
    add_config_arguments(p, ExtractConfig)
    p.set_defaults(func=run)


def _jobs(args: ExtractConfig) -> list[tuple[str, list, list[str]]]:
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

    cfg = config_from_args(ExtractConfig, args)
    if args.print_config:
        return 0
    main_process = int(os.environ.get("RANK", "0")) == 0
    bb = Backbone.from_pretrained(cfg.backbone, device=cfg.device, dtype=cfg.dtype, max_length=cfg.max_length, revision=cfg.revision)
    report = {"backbone": bb.identity, "store": cfg.store, "data": cfg.data, "jobs": {}}
    for label, prompts, responses in _jobs(cfg):
        t0 = time.perf_counter()
        f = extract(bb, prompts, responses, store=cfg.store, batch_size=cfg.batch_size, shard_size=cfg.shard_size,
                    progress=cfg.progress and main_process)
        secs = time.perf_counter() - t0
        report["jobs"][label] = {"n": len(prompts), "computed": f.n_computed, "cached": f.n_cached,
                                 "truncated": f.n_truncated, "seconds": round(secs, 2), "dim": int(f.reward.shape[-1])}
        if main_process:
            print(f"{label}: {len(prompts)} items, {f.n_computed} computed, {f.n_cached} from cache, "
                  f"{f.n_truncated} truncated at {bb.max_length} tokens, {secs:.1f} s, features [{len(prompts)}, {f.reward.shape[-1]}]")
    if main_process:
        print(f"store: {cfg.store}  backbone identity: {bb.identity}")
        if cfg.json:
            with open(cfg.json, "w") as fh:
                json.dump(report, fh, indent=1)
    return 0
