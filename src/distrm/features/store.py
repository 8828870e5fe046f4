"""The feature store: frozen-backbone features computed once, cached on disk.

Layout: ``<root>/<sha(backbone identity)>/`` holds shards; each shard is three files
written atomically (temp file + ``os.replace``), the ``.keys.npy`` last, so a shard without
its keys file is an unfinished one and is ignored (and overwritten) on the next run:

    shard-<rank>-<uuid>.reward.npy   [n, d] float32   reward features (prompt + response)
    shard-<rank>-<uuid>.prompt.npy   [n, d] float32   prompt features of the same rows
    shard-<rank>-<uuid>.keys.npy     [n, 32] uint8     sha256 of (prompt, response)

Keys hash the canonical prompt and the response text, so identical texts (the same
prompt under chosen and rejected, duplicates across datasets) are computed once. A killed
run resumes: finished shards are found by their keys files and only missing texts are
computed. Reads are memory-mapped. Under ``accelerate launch`` each process computes its
slice of the missing texts into its own shards; after a barrier every process reads all.
On a CPU-only machine launch with ``accelerate launch --multi_gpu --num_processes 2 ...``
(accelerate's ``--cpu`` flag starts a single process); the store then uses gloo.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from distrm.data.records import Prompt, prompt_key

DEFAULT_STORE = Path(".cache/distrm/features")


def text_key(prompt: Prompt, response: str) -> bytes:
    h = hashlib.sha256()
    h.update(prompt_key(prompt).encode("utf-8"))
    h.update(b"\x00")
    h.update(response.encode("utf-8", errors="surrogatepass"))
    return h.digest()


@dataclass
class Features:
    """Features in input order, plus where they came from."""

    reward: np.ndarray  # [n, d]
    prompt: np.ndarray  # [n, d]
    n_computed: int  # unique texts run through the backbone now
    n_cached: int  # unique texts served from the store
    n_truncated: int


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class FeatureStore:
    """On-disk cache of one backbone's features (see module docstring)."""

    def __init__(self, root: str | Path, identity: str) -> None:
        self.dir = Path(root) / hashlib.sha256(identity.encode()).hexdigest()[:24]
        self.dir.mkdir(parents=True, exist_ok=True)
        ident = self.dir / "IDENTITY"
        if not ident.exists():
            ident.write_text(identity + "\n", encoding="utf-8")

    def index(self) -> dict[bytes, tuple[str, int]]:
        """key -> (shard stem, row) over finished shards."""
        idx: dict[bytes, tuple[str, int]] = {}
        for kf in sorted(self.dir.glob("shard-*.keys.npy")):
            stem = kf.name[: -len(".keys.npy")]
            for row, k in enumerate(np.load(kf)):
                idx.setdefault(k.tobytes(), (stem, row))
        return idx

    def write_shard(self, keys: list[bytes], reward: np.ndarray, prompt: np.ndarray, rank: int = 0) -> str:
        stem = f"shard-{rank:03d}-{uuid.uuid4().hex[:12]}"
        _save_atomic(self.dir / f"{stem}.reward.npy", reward.astype(np.float32))
        _save_atomic(self.dir / f"{stem}.prompt.npy", prompt.astype(np.float32))
        # raw digests as uint8 rows ('S32' would strip trailing zero bytes); written last = commit marker
        _save_atomic(self.dir / f"{stem}.keys.npy", np.frombuffer(b"".join(keys), np.uint8).reshape(-1, 32))
        return stem

    def gather(self, keys: Sequence[bytes], idx: dict[bytes, tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for i, k in enumerate(keys):
            stem, row = idx[k]
            by_shard.setdefault(stem, []).append((i, row))
        reward = prompt = None
        for stem, pairs in by_shard.items():
            r = np.load(self.dir / f"{stem}.reward.npy", mmap_mode="r")
            p = np.load(self.dir / f"{stem}.prompt.npy", mmap_mode="r")
            if reward is None:
                reward = np.empty((len(keys), r.shape[1]), np.float32)
                prompt = np.empty((len(keys), p.shape[1]), np.float32)
            dst = np.array([a for a, _ in pairs])
            src = np.array([b for _, b in pairs])
            reward[dst] = r[src]
            prompt[dst] = p[src]
        if reward is None:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
        return reward, prompt


def _dist_state():
    """(rank, world, barrier) from accelerate when launched with several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    import torch
    from accelerate import PartialState

    st = PartialState(cpu=not torch.cuda.is_available())  # gloo on CPU-only machines
    return st.process_index, st.num_processes, st.wait_for_everyone


def extract(
    backbone,
    prompts: Sequence[Prompt],
    responses: Sequence[str],
    store: str | Path | None = DEFAULT_STORE,
    batch_size: int = 32,
    shard_size: int = 1024,
    progress: bool = True,
) -> Features:
    """Reward and prompt features for aligned prompts/responses, via the store.

    ``store=None`` computes in memory without caching (used by the server and ``score``)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            raise ValueError(f"response {i} is {type(r).__name__}, expected str")
    keys = [text_key(p, r) for p, r in zip(prompts, responses)]
    first: dict[bytes, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    if store is None:
        uniq = list(first.values())
        emb = backbone.embed([prompts[i] for i in uniq], [responses[i] for i in uniq], batch_size)
        pos = {k: j for j, k in enumerate(first)}
        sel = np.array([pos[k] for k in keys], dtype=np.int64)
        return Features(emb.reward[sel], emb.prompt[sel], len(uniq), 0, emb.n_truncated)

    fs = FeatureStore(store, backbone.identity)
    rank, world, barrier = _dist_state()
    idx = fs.index()
    missing = [k for k in first if k not in idx]
    n_cached = len(first) - len(missing)
    mine = missing[rank::world]
    n_trunc = 0
    bar = tqdm(total=len(mine), desc=f"features[{backbone.name}]", unit="text", disable=not progress or not mine)
    for s in range(0, len(mine), shard_size):
        chunk = mine[s : s + shard_size]
        rows = [first[k] for k in chunk]
        emb = backbone.embed([prompts[i] for i in rows], [responses[i] for i in rows], batch_size, bar=bar)
        n_trunc += emb.n_truncated
        fs.write_shard(chunk, emb.reward, emb.prompt, rank)
    bar.close()
    if world > 1:
        barrier()
    if missing:
        idx = fs.index()
    lost = [k for k in first if k not in idx]
    if lost:
        raise RuntimeError(f"{len(lost)} texts missing from the feature store after extraction: {fs.dir}")
    reward, prompt = fs.gather(keys, idx)
    return Features(reward, prompt, len(missing), n_cached, n_trunc)
