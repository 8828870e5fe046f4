"""``distrm extract``: compute a dataset's backbone features into the feature store ahead of
training/evaluation, so those steps (and reruns, other seeds) cost no backbone time.

    distrm extract --backbone minilm --data hh-rlhf
    distrm extract --backbone smollm2-135m --data ultrafeedback --kind rated --limit 500
    accelerate launch --num_processes 8 -m distrm extract --backbone smollm2-135m --data ultrafeedback
    torchrun --nproc_per_node 2 -m distrm extract --backbone minilm --data hh-rlhf

Pairs are extracted for the chosen and the rejected response, rated sets for each response.
Texts already in the store are skipped; a killed run resumes where its shards stopped.

Under a launcher every process loads the backbone onto its own device (``cuda:LOCAL_RANK``,
or the CPU) before any weight is read, logs which, computes its slice of the missing texts
into its own shards (each records the rank, host and device that wrote it), and after a
barrier all read the same merged features. On a CPU-only machine start several processes
with ``torchrun --nproc_per_node N`` or ``accelerate launch --multi_gpu --num_processes N``
(accelerate without ``--multi_gpu`` finds no GPU and starts ONE process).
"""

from __future__ import annotations

import argparse
import json
import logging
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
    # dtype the store keeps (read back as float32): bfloat16 halves disk and page cache at paper
    # scale; part of the store key, so train with the same backbone.store_dtype
    store_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    batch_size: int = 32
    shard_size: int = 1024  # texts per store shard (the unit a killed run resumes at)
    max_length: int = 512  # tokens; longer inputs are truncated and counted
    dtype: Literal["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU; bfloat16 is fast on AMX CPUs
    limit: int | None = None  # first N records of each kind (quick runs)
    device: str = "auto"  # auto: cuda:LOCAL_RANK (one GPU per launched process) if CUDA is available, else cpu; or cpu, cuda, cuda:N
    packed: Literal["auto", "off"] = "auto"  # auto: packed (padding-free) batches where supported (CUDA, bf16/fp16, Llama/Mistral/Qwen/Gemma-3), else padded, logged; off: padded
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


log = logging.getLogger(__name__)


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
    from distrm.features.devices import process_place

    cfg = config_from_args(ExtractConfig, args)
    if args.print_config:
        return 0
    place = process_place()
    main_process = place.rank == 0
    bb = Backbone.from_pretrained(cfg.backbone, device=cfg.device, dtype=cfg.dtype, max_length=cfg.max_length,
                                  revision=cfg.revision, packed="auto" if cfg.packed == "auto" else False)
    # every rank says where it runs: the one line that shows a multi-GPU launch really spread out
    log.info("rank %d/%d (local %d): backbone %s on %s, %s, %s batches (%s)", place.rank, place.world_size,
             place.local_rank, cfg.backbone, bb.device, str(bb.dtype).replace("torch.", ""),
             "packed" if bb.packed else "padded", bb.packed_reason)
    report = {"backbone": bb.identity, "store": cfg.store, "data": cfg.data, "world_size": place.world_size,
              "device": str(bb.device), "packed": bb.packed, "jobs": {}}
    for label, prompts, responses in _jobs(cfg):
        t0 = time.perf_counter()
        f = extract(bb, prompts, responses, store=cfg.store, store_dtype=cfg.store_dtype, batch_size=cfg.batch_size,
                    shard_size=cfg.shard_size, progress=cfg.progress and main_process)
        secs = time.perf_counter() - t0
        report["jobs"][label] = {"n": len(prompts), "computed": f.n_computed, "cached": f.n_cached,
                                 "truncated": f.n_truncated, "seconds": round(secs, 2), "dim": int(f.reward.shape[-1])}
        if main_process:
            print(f"{label}: {len(prompts)} items, {f.n_computed} computed, {f.n_cached} from cache, "
                  f"{f.n_truncated} truncated at {bb.max_length} tokens{' (by rank 0)' if place.distributed else ''}, {secs:.1f} s, features [{len(prompts)}, {f.reward.shape[-1]}]")
    if main_process:
        print(f"store: {cfg.store}  backbone identity: {bb.identity}")
        if cfg.json:
            with open(cfg.json, "w") as fh:
                json.dump(report, fh, indent=1)
    return 0
