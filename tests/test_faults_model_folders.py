"""Damaged model folders are refused with one line naming the file, the field and what was
expected -- through the Python API and ``distrm score`` (exit 2, no traceback).

Each case damages a freshly saved QRM folder and, where the damage would otherwise be caught
by the manifest, re-seals it (``conftest.reseal`` / ``write_manifest``) so the validation
behind the manifest is what answers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import reseal
from distrm.distribution import default_levels
from distrm.models.auto import AutoRewardModel
from distrm.models.base import write_manifest
from distrm.models.qrm import DistributionalRewardModel, ModelConfig

D = 8


@pytest.fixture()
def folder(tmp_path) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="minilm", feature_dim=D, attributes=["a", "b"], levels=default_levels(5).tolist(),
                      gate="fixed", fixed_weights=[0.5, 0.5], debias_source="length", backbone_identity="fake@1")
    m = DistributionalRewardModel(cfg, torch.randn(2, 5, D, dtype=torch.float64), torch.zeros(2, 5, dtype=torch.float64),
                                  debias=torch.tensor([0.1, 0.2], dtype=torch.float64))
    return m.save_pretrained(tmp_path / "model")


def config_of(d: Path) -> dict:
    return json.loads((d / "config.json").read_text())


def edit_config(**fields):
    def damage(d: Path) -> None:
        reseal(d, {**config_of(d), **fields})
    return damage


def edit_tensors(fn):
    def damage(d: Path) -> None:
        t = load_file(str(d / "model.safetensors"))
        fn(t)
        save_file(t, str(d / "model.safetensors"))
        write_manifest(d, "qrm")
    return damage


def truncated(d: Path) -> None:
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    write_manifest(d, "qrm")


def pickle_weights(d: Path) -> None:
    torch.save({"heads.coef": torch.zeros(1)}, d / "model.safetensors")  # a pickle under the safetensors name
    write_manifest(d, "qrm")


def only_pickle(d: Path) -> None:
    (d / "model.safetensors").unlink()
    torch.save({"heads.coef": torch.zeros(1)}, d / "pytorch_model.bin")


def pickle_backbone(d: Path) -> None:
    bb = d / "bb"
    bb.mkdir()
    (bb / "config.json").write_text(json.dumps({"model_type": "bert"}))
    torch.save({"w": torch.zeros(1)}, bb / "pytorch_model.bin")
    reseal(d, {**config_of(d), "backbone": "./bb"})


def nan_at(t):
    t["heads.coef"][0, 0, 0] = math.nan


def inf_at(t):
    t["debias"][1] = math.inf


def no_manifest(d: Path) -> None:
    (d / "distrm_manifest.json").unlink()


def unsealed_edit(d: Path) -> None:
    (d / "config.json").write_text(json.dumps({**config_of(d), "gate_temperature": 1.0}))


def bad_json(d: Path) -> None:
    reseal(d, {})  # a valid seal over ...
    (d / "config.json").write_text("{not json")
    write_manifest(d, "qrm")


# name -> (damage, file named in the message, words the message must hold)
CASES = {
    "truncated_weights": (truncated, "model.safetensors", ["safetensors"]),
    "pickle_as_weights": (pickle_weights, "model.safetensors", ["safetensors"]),
    "only_pickle_weights": (only_pickle, "model.safetensors", ["pickle", "missing"]),
    "feature_dim_str": (edit_config(feature_dim="eight"), "config.json", ["feature_dim"]),
    "attributes_not_list": (edit_config(attributes="ab"), "config.json", ["attributes"]),
    "levels_str": (edit_config(levels="0.1,0.5"), "config.json", ["levels"]),
    "gate_temperature_str": (edit_config(gate_temperature="hot"), "config.json", ["gate_temperature"]),
    "reversed_levels": (edit_config(levels=default_levels(5).tolist()[::-1]), "config.json", ["levels", "increasing"]),
    "levels_out_of_range": (edit_config(levels=[0.0, 0.25, 0.5, 0.75, 1.0]), "config.json", ["levels"]),
    "debias_wrong_shape": (edit_tensors(lambda t: t.__setitem__("debias", torch.zeros(3, dtype=torch.float64))),
                           "model.safetensors", ["debias", "(2,)"]),
    "coef_wrong_shape": (edit_tensors(lambda t: t.__setitem__("heads.coef", torch.zeros(2, 5, D + 1, dtype=torch.float64))),
                         "model.safetensors", ["heads.coef"]),
    "missing_tensor": (edit_tensors(lambda t: t.pop("heads.intercept")), "model.safetensors", ["heads.intercept", "missing"]),
    "nan_weights": (edit_tensors(nan_at), "model.safetensors", ["heads.coef", "non-finite"]),
    "inf_debias": (edit_tensors(inf_at), "model.safetensors", ["debias", "non-finite"]),
    "pickle_only_backbone": (pickle_backbone, "config.json", ["backbone", "pickle", "safetensors"]),
    "no_manifest": (no_manifest, "", ["distrm_manifest.json", "missing"]),
    "unsealed_edit": (unsealed_edit, "config.json", ["distrm_manifest.json"]),
    "config_not_json": (bad_json, "config.json", ["JSON"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_python_api_refuses_with_one_line(folder, case):
    damage, fname, words = CASES[case]
    damage(folder)
    with pytest.raises((ValueError, FileNotFoundError)) as ei:
        AutoRewardModel.from_pretrained(folder)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    assert str(folder / fname) in msg, msg
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("case", list(CASES))
def test_cli_score_refuses_with_one_line(folder, case, capsys):
    from distrm.cli import main

    damage, fname, words = CASES[case]
    damage(folder)
    assert main(["score", str(folder), "--prompt", "p", "--response", "r"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert str(folder / fname) in err, err


def test_backbone_loader_never_unpickles(tmp_path):
    """``Backbone.from_pretrained`` on a folder with only a pickle checkpoint: a one-line
    refusal, never ``torch.load`` (whatever torch's default)."""
    import shutil

    from distrm.features.backbones import Backbone, resolve_model_dir

    src = tmp_path / "bb"
    shutil.copytree(resolve_model_dir("minilm"), src)
    (src / "model.safetensors").unlink()
    (src / "pytorch_model.bin").write_bytes(b"pickle that must never be loaded")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        Backbone.from_pretrained(str(src), max_length=32, device="cpu")
