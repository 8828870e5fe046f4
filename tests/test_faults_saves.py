"""Fault injection: ``save_pretrained`` SIGKILLed at every step of a save into an existing folder.

``tests/scripts/kill_save.py`` forks one child per kill point; each child saves a new model
into a copy of a folder holding an old model and kills itself (SIGKILL) at the k-th
filesystem mutation (before it, or after it with a written file half-truncated). Every
resulting folder must load as exactly the old model or exactly the new one, or be refused
with one clear line -- never a mixture -- and what a killed save leaves behind is clearly
named, ignored by loads and removed by the next save.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distrm.distribution import default_levels
from distrm.models.auto import AutoRewardModel
from distrm.models.base import MANIFEST_NAME, SAVE_STAGING_PREFIX
from distrm.models.qrm import DistributionalRewardModel, ModelConfig

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

SCRIPT = Path(__file__).parent / "scripts" / "kill_save.py"
D = 8
RESPONSES = ["short", "a somewhat longer response here", "mid length one"]


def qrm(seed: int, backbone: str, weights: list[float], max_length: int, temperature: float) -> DistributionalRewardModel:
    g = torch.Generator().manual_seed(seed)
    cfg = ModelConfig(backbone=backbone, feature_dim=D, attributes=["a", "b"], levels=default_levels(5).tolist(),
                      gate="fixed", fixed_weights=weights, debias_source="length", backbone_max_length=max_length,
                      gate_temperature=temperature, backbone_identity=f"fake@{seed}")
    coef = torch.randn(2, 5, D, dtype=torch.float64, generator=g)
    intercept = torch.randn(2, 5, dtype=torch.float64, generator=g)
    debias = torch.rand(2, dtype=torch.float64, generator=g)
    return DistributionalRewardModel(cfg, coef, intercept, debias=debias)


def fake_backbone(folder: Path, tag: str) -> Path:
    """A stand-in backbone folder (never loaded here: only bundled and compared byte for byte)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "tag": tag}))
    save_file({"w": torch.full((16, 16), float(len(tag)))}, str(folder / "model.safetensors"))
    (folder / "tokenizer.json").write_text(json.dumps({"tag": tag, "pad": "x" * (100 * len(tag))}))
    return folder


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file's bytes but the weights and the manifest (safetensors orders its metadata
    differently from one save to the next; the weights are compared as tensors instead)."""
    skip = {"model.safetensors", MANIFEST_NAME}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and str(p.relative_to(folder)) not in skip and not str(p.relative_to(folder)).startswith(SAVE_STAGING_PREFIX)}


def same_model(a, b) -> bool:
    if a.config != b.config:
        return False
    ta, tb = a.state_tensors(), b.state_tensors()
    if ta.keys() != tb.keys() or not all(torch.equal(ta[k], tb[k]) for k in ta):
        return False
    x = torch.randn(len(RESPONSES), D, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    return torch.equal(a.score_features(x, x, RESPONSES).reward.values, b.score_features(x, x, RESPONSES).reward.values)


def stray(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(SAVE_STAGING_PREFIX) or ".tmp-" in p.name)


@pytest.mark.parametrize("include_backbone", [False, True], ids=["heads", "bundled_backbone"])
def test_killed_save_loads_old_or_new_or_is_refused(tmp_path, include_backbone):
    if include_backbone:
        bb_old, bb_new = fake_backbone(tmp_path / "bb_old", "old"), fake_backbone(tmp_path / "bb_new", "newer")
        old_m = qrm(1, str(bb_old), [0.3, 0.7], 64, 5.0)
        new_m = qrm(2, str(bb_new), [0.6, 0.4], 128, 2.0)
    else:
        old_m = qrm(1, "minilm", [0.3, 0.7], 64, 5.0)
        new_m = qrm(2, "minilm", [0.6, 0.4], 128, 2.0)
    old_dir, new_dir = tmp_path / "old" / "model", tmp_path / "new" / "model"
    old_m.save_pretrained(old_dir, include_backbone=include_backbone)
    new_m.save_pretrained(new_dir, include_backbone=include_backbone)
    old_ref, new_ref = AutoRewardModel.from_pretrained(old_dir), AutoRewardModel.from_pretrained(new_dir)
    assert not same_model(old_ref, new_ref)
    old_files, new_files = files_of(old_dir), files_of(new_dir)

    work = tmp_path / "runs"
    args = [sys.executable, str(SCRIPT), str(old_dir), str(new_dir), str(work)] + (["--include-backbone"] if include_backbone else [])
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    runs = result["runs"]
    assert result["points"] >= 20, result  # every mutation of the save was a kill point
    assert [r["killed"] for r in runs] == [True] * result["points"] + [False]

    outcomes: dict[str, list[int]] = {"old": [], "new": [], "refused": []}
    for r in runs:
        folder = Path(r["folder"])
        try:
            m = AutoRewardModel.from_pretrained(folder)
        except (ValueError, FileNotFoundError) as e:
            msg = str(e)
            assert "\n" not in msg and str(folder) in msg, (r, msg)
            assert "manifest" in msg, (r, msg)
            outcomes["refused"].append(r["k"])
        else:
            visible = files_of(folder)  # config, card, bundled backbone: byte for byte
            if same_model(m, old_ref):
                assert visible == old_files, (r, "old model but not the old files")
                outcomes["old"].append(r["k"])
            elif same_model(m, new_ref):
                assert visible == new_files, (r, "new model but not the new files")
                outcomes["new"].append(r["k"])
            else:
                pytest.fail(f"kill point {r}: the folder loads as neither the old nor the new model")
        # leftovers of the killed save: clearly named only, and gone after the next save
        left = stray(folder)
        assert all(n.startswith(SAVE_STAGING_PREFIX) or ".tmp-" in n for n in left)
        if r["killed"]:
            new_m2 = AutoRewardModel.from_pretrained(new_dir)
            new_m2.save_pretrained(folder, include_backbone=include_backbone)
            assert stray(folder) == [], (r, stray(folder))
            assert same_model(AutoRewardModel.from_pretrained(folder), new_ref)
        else:
            assert left == []  # a finished save leaves nothing behind
    assert runs[-1]["k"] in outcomes["new"]
    # before the commit the old model survives; after the manifest the new one loads
    assert outcomes["old"] and outcomes["new"] and outcomes["old"][-1] < min(outcomes["refused"] or [10**9])
    print(f"{result['points']} kill points: {len(outcomes['old'])} old, {len(outcomes['new'])} new, "
          f"{len(outcomes['refused'])} refused")
    (tmp_path / "summary.json").write_text(json.dumps({"points": result["points"], **outcomes}))


def test_a_running_save_keeps_its_staging_folder(tmp_path):
    """The next save removes only the leftovers of dead processes, never a live save's."""
    from distrm.models.base import clean_stale_saves

    m = qrm(1, "minilm", [0.3, 0.7], 64, 5.0)
    m.save_pretrained(tmp_path / "m")
    live = tmp_path / "m" / f"{SAVE_STAGING_PREFIX}{os.getppid()}"  # pytest's parent: alive
    live.mkdir()
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    dead = tmp_path / "m" / f"{SAVE_STAGING_PREFIX}{dead_pid}"
    dead.mkdir()
    tmpfile = tmp_path / "m" / f".{MANIFEST_NAME}.tmp-{dead_pid}"
    tmpfile.write_text("{")
    assert AutoRewardModel.from_pretrained(tmp_path / "m").config == m.config  # loads ignore them
    clean_stale_saves(tmp_path / "m")
    assert live.is_dir() and not dead.exists() and not tmpfile.exists()
