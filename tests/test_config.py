"""Dataclass configs: YAML + --set overrides, unknown keys named, CLI wiring."""

import pytest

from distrm.cli import main
from distrm.cli.train import default_config_path
from distrm.config import TrainConfig, load_config


def test_embedded_default_config_loads_with_paper_head_settings():
    cfg = load_config(TrainConfig, default_config_path())
    assert cfg.backbone.name == "minilm"
    # paper levels; the penalty is chosen by CV on standardised features (null), not fixed
    assert cfg.heads.n_levels == 19 and cfg.heads.alpha is None and cfg.heads.standardize
    assert cfg.gate.lr == pytest.approx(3e-4) and cfg.gate.batch_size == 1024


def test_overrides_are_typed_and_nested(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("gate:\n  epochs: 5\n")
    cfg = load_config(TrainConfig, p, ["gate.epochs=7", "heads.alpha=0.01", "data.rated=[a, b]"])
    assert cfg.gate.epochs == 7 and cfg.heads.alpha == 0.01 and cfg.data.rated == ["a", "b"]


def test_unknown_keys_and_bad_yaml_are_clear(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("gate:\n  epocs: 5\n")
    with pytest.raises(ValueError, match=r"c.yaml: unknown key\(s\) \['gate.epocs'\]"):
        load_config(TrainConfig, p)
    p.write_text("gate: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(TrainConfig, p)
    with pytest.raises(ValueError, match="expected section.key=value"):
        load_config(TrainConfig, None, ["gate.epochs"])
    with pytest.raises(FileNotFoundError):
        load_config(TrainConfig, tmp_path / "missing.yaml")


def test_cli_print_config_and_error_exit(capsys, tmp_path):
    assert main(["train", "--print-config", "--set", "gate.epochs=9"]) == 0
    assert "epochs: 9" in capsys.readouterr().out
    assert main(["train", "--print-config", "--set", "nope.x=1"]) == 2
    assert "unknown key" in capsys.readouterr().err


@pytest.mark.parametrize("override, needle", [
    ("heads.alpha=abc", "heads.alpha: expected float or null, got 'abc'"),
    ("heads.kind=lasso", "heads.kind: expected one of ['quantile', 'ridge']"),
    ("model=qrmm", "model: expected one of ['qrm', 'ensemble', 'quantile_ensemble', 'dpl']"),
    ("gate.epochs=2.5", "gate.epochs: expected an integer"),
    ("progress=maybe", "progress: expected true or false"),
])
def test_bad_values_fail_before_any_work(override, needle, capsys, monkeypatch):
    """A wrong type or an unknown choice is one line naming the key, before any data or backbone."""
    import time

    import distrm.features.backbones
    from distrm.cli import main

    def boom(*a, **k):  # pragma: no cover - reaching it is the failure
        raise AssertionError("backbone loaded before the config was validated")

    monkeypatch.setattr(distrm.features.backbones.Backbone, "from_pretrained", boom)
    t0 = time.perf_counter()
    assert main(["train", "--set", override]) == 2
    assert time.perf_counter() - t0 < 5
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_numbers_are_coerced():
    cfg = load_config(TrainConfig, default_config_path(), ["heads.alpha=1e-3", "gate.epochs=4.0", "heads.tol='1e-5'"])
    assert cfg.heads.alpha == 1e-3 and cfg.gate.epochs == 4 and cfg.heads.tol == 1e-5


def test_help_lists_every_config_key(capsys):
    from distrm.cli import main
    from distrm.config import field_help

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    rows = field_help(TrainConfig)
    assert {k for k, *_ in rows} >= {"heads.alpha", "heads.solver", "gate.val_fraction", "data.max_rows_per_source"}
    for key, _, _, h in rows:
        assert f"  {key} (" in out
    assert "chosen per attribute by cross-validation" in out and "Literal['ipm', 'admm']" in out
