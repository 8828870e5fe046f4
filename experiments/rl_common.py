"""Reward models and judges for the RL and best-of-N experiments, built with the distrm library.

Every model here is a distrm :class:`~distrm.models.bt_ensemble.EnsembleRewardModel`: frozen
:class:`~distrm.features.backbones.Backbone` features from the feature store
(:func:`distrm.features.extract`), N linear Bradley-Terry heads
(:class:`~distrm.heads.ensemble.BTEnsembleHeads`, trained by
:func:`distrm.models.bt_ensemble.train_ensemble` where the data are preference pairs), saved with
``save_pretrained`` and loaded back through :func:`distrm.models.auto.load_reward_model`: what the
experiments score with is exactly what a user would load from disk.

* ``hh_ensemble``   -- training reward, HH-RLHF / PKU / BeaverTails setting: 10 BT heads
  (bootstrap resamples) on MiniLM features of the HH-RLHF harmless-base pairs (train side
  of the prompt-hash split).
* ``safety_judge``  -- the independent judge there: a different backbone (SmolLM2-135M,
  last-token chat features, bf16) and different data (PKU-SafeRLHF pairs, safer preferred).
* ``imdb_ensemble`` -- training reward, IMDB setting: 10 BT heads on MiniLM features,
  each pair = (a positive review, a negative review) of the imdb-sample train rows, each
  review fed as (its first 8 words, the rest) like an RL prompt and continuation. The judge
  there is VADER (``distrm.rl.rloo.VaderJudge``).
* ``uf_ensemble``   -- the best-of-N reward: 10 BT heads on MiniLM features of the
  UltraFeedback binarized sample + Orca DPO pairs (train side).

Every build writes ``heldout.json`` beside the model: pair accuracy (ensemble mean; a tie
counts as wrong) on the held-out side, so a broken or mis-oriented model is visible.
Models live under ``.cache/distrm/rl-models/<name>`` (``$DISTRM_RL_MODELS``) and are built on
first use. ``reward.model: experiments.rl_common:hh_ensemble`` in a run config selects one,
as does the saved directory itself.

    PYTHONPATH=src:. python experiments/rl_common.py hh safety imdb uf   # build + report
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from distrm.config import BackboneConfig, DataConfig, EnsembleConfig, TrainConfig  # noqa: E402
from distrm.models.auto import load_reward_model  # noqa: E402

CACHE = Path(os.environ.get("DISTRM_RL_MODELS", ROOT / ".cache" / "distrm" / "rl-models"))
STORE = str(ROOT / ".cache" / "distrm" / "features")  # the shared feature store
MINILM = dict(name="minilm", dtype="bfloat16", max_length=512, batch_size=64)
SMOLLM2 = dict(name="smollm2-135m", dtype="bfloat16", max_length=512, batch_size=16)


def _ready(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file() and (path / "heldout.json").is_file()


def heldout_accuracy(model: Any, pairs: list, batch_size: int = 32) -> dict[str, Any]:
    """Pair accuracy of a loaded model on held-out pairs (features through the store)."""
    from distrm.eval.pairs import evaluate_pairs
    from distrm.features import extract

    bb = model.backbone
    fc = extract(bb, [p.prompt for p in pairs], [p.chosen for p in pairs], store=STORE, batch_size=batch_size, progress=False)
    fr = extract(bb, [p.prompt for p in pairs], [p.rejected for p in pairs], store=STORE, batch_size=batch_size, progress=False)
    rep = evaluate_pairs(model, pairs, (fc.reward, fr.reward))
    Rc, Rr = np.asarray(fc.reward), np.asarray(fr.reward)
    rep["identical_features"] = int((np.abs(Rc - Rr).max(1) == 0).sum())  # ties a truncation would cause
    return rep


def build_pairs_ensemble(
    name: str, pairs: list[str], backbone: dict[str, Any], n_members: int = 10, max_rows: int | None = None,
    test_fraction: float = 0.2, **ens: Any,
) -> Path:
    """``distrm.models.bt_ensemble.train_ensemble`` on registry pair sets (train side), then held-out
    pair accuracy on the test side of the same prompt-hash split. Returns the saved dir."""
    from distrm.data import registry
    from distrm.data.splits import split
    from distrm.training.bt_ensemble import train_ensemble

    out = CACHE / name
    if _ready(out):
        return out
    t0 = time.time()
    cfg = TrainConfig(
        output_dir=str(out), seed=0, model="ensemble", progress=False,
        data=DataConfig(rated=[], pairs=list(pairs), test_fraction=test_fraction, max_rows_per_source=max_rows),
        backbone=BackboneConfig(store=STORE, **backbone),
        ensemble=EnsembleConfig(n_members=n_members, **{"bootstrap": True, "optimizer": "lbfgs", "l2": 1e-3, **ens}),
    )
    train_ensemble(cfg)
    test = []
    for src in pairs:
        recs = registry.load_pairs(src).records
        if max_rows:
            recs = recs[:max_rows]  # the same per-source cap as training (one source per name)
        test += split(recs, "test", test_fraction=test_fraction)
    model = load_reward_model(out)
    rep = heldout_accuracy(model, test, backbone.get("batch_size", 32))
    rep |= {"pairs": list(pairs), "max_rows_per_source": max_rows, "seconds": round(time.time() - t0, 1)}
    (out / "heldout.json").write_text(json.dumps(rep, indent=1) + "\n")
    print(f"[{name}] held-out pair accuracy {rep['accuracy']:.3f} on {rep['n']} pairs", flush=True)
    return out


# ---------------------------------------------------------------------------- the models
def build_hh() -> Path:
    return build_pairs_ensemble("hh-minilm-ens10", ["hh-rlhf"], MINILM)


def build_safety_judge() -> Path:
    # different backbone and different data from the HH reward; 800 PKU pairs keep the
    # SmolLM2 extraction to a few CPU minutes
    return build_pairs_ensemble("pku-smollm2-ens5", ["pku-saferlhf"], SMOLLM2, n_members=5, max_rows=800)


def build_uf() -> Path:
    return build_pairs_ensemble("uf-orca-minilm-ens10", ["ultrafeedback", "orca"], MINILM)


def build_imdb(n_members: int = 10, prefix_words: int = 8) -> Path:
    """Sentiment as preference: (positive review > negative review) pairs of the imdb-sample
    train rows, each review split like an RL prompt: (first words, continuation)."""
    import csv

    from distrm.features.backbones import Backbone
    from distrm.models.bt_ensemble import EnsembleRewardModel
    from distrm.features import extract
    from distrm.heads.ensemble import BTEnsembleHeads
    from distrm.rl.prompts import default_data_dir

    out = CACHE / "imdb-minilm-ens10"
    if _ready(out):
        return out
    t0 = time.time()
    with open(default_data_dir() / "imdb-sample" / "texts.csv", encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["text"].strip()]

    def as_pair(text: str) -> tuple[str, str]:
        w = text.replace("<br />", " ").split()
        return " ".join(w[:prefix_words]), " " + " ".join(w[prefix_words:])

    def pairs_of(valid: str, seed: int) -> tuple[list, list]:
        pos = [as_pair(r["text"]) for r in rows if r["is_valid"] == valid and r["label"] == "positive"]
        neg = [as_pair(r["text"]) for r in rows if r["is_valid"] == valid and r["label"] == "negative"]
        rng = random.Random(seed)
        rng.shuffle(pos)
        rng.shuffle(neg)
        n = min(len(pos), len(neg))
        return pos[:n], neg[:n]

    c = MINILM
    bb = Backbone.from_pretrained(c["name"], dtype=c["dtype"], max_length=c["max_length"])

    def feats(items: list) -> np.ndarray:
        return np.asarray(extract(bb, [p for p, _ in items], [r for _, r in items], store=STORE, batch_size=c["batch_size"], progress=False).reward)

    pos, neg = pairs_of("False", 0)
    heads = BTEnsembleHeads(n_members=n_members, bootstrap=True, optimizer="lbfgs", l2=1e-3, seed=0).fit(feats(pos), feats(neg))
    model = EnsembleRewardModel.from_heads(
        heads, backbone=c["name"], backbone_identity=bb.identity, backbone_max_length=c["max_length"], backbone_dtype=c["dtype"],
        training={"data": "imdb-sample train rows: (positive > negative) review pairs", "n_pairs": len(pos), "bootstrap": True},
    )
    model.save_pretrained(out)
    loaded = load_reward_model(out, backbone=bb)
    vpos, vneg = pairs_of("True", 1)
    sp, sn = loaded.score_features(torch.as_tensor(feats(vpos))).mean, loaded.score_features(torch.as_tensor(feats(vneg))).mean
    rep = {"n": len(vpos), "accuracy": float((sp > sn).double().mean()), "data": "imdb-sample valid rows, (positive, negative) pairs",
           "seconds": round(time.time() - t0, 1)}
    (out / "heldout.json").write_text(json.dumps(rep, indent=1) + "\n")
    print(f"[imdb] held-out pair accuracy {rep['accuracy']:.3f} on {rep['n']} pairs", flush=True)
    return out


BUILDERS: dict[str, Callable[[], Path]] = {"hh": build_hh, "safety": build_safety_judge, "imdb": build_imdb, "uf": build_uf}


# factories for ``reward.model: experiments.rl_common:<name>``: the model loaded from disk
def hh_ensemble() -> Any:
    return load_reward_model(build_hh())


def safety_judge() -> Any:
    return load_reward_model(build_safety_judge())


def imdb_ensemble() -> Any:
    return load_reward_model(build_imdb())


def uf_ensemble() -> Any:
    return load_reward_model(build_uf())


def describe(path: Path) -> dict[str, Any]:
    """What the experiments' JSON records about a model: where it is, what it was trained on,
    its held-out accuracy."""
    cfg = json.loads((path / "config.json").read_text())
    held = json.loads((path / "heldout.json").read_text())
    return {
        "dir": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        "kind": cfg.get("model_type", "qrm"), "backbone": cfg.get("backbone"), "backbone_dtype": cfg.get("backbone_dtype"),
        "n_members": cfg.get("n_members"), "training": cfg.get("training"),
        "heldout": {k: held[k] for k in ("n", "accuracy", "pairs", "data", "identical_features") if k in held},
    }


if __name__ == "__main__":
    for which in sys.argv[1:] or list(BUILDERS):
        p = BUILDERS[which]()
        print(which, json.dumps(describe(p), indent=1))
