"""One risk vocabulary: the same specs are accepted or refused, with the same values, by the
CLI (``distrm score --risk``), a YAML config (the RL reward), the HTTP API (``/score``) and
Python, and a bad spec fails before any backbone or model is loaded."""

from __future__ import annotations

import httpx
import pytest
import torch

from distrm.risk import RiskMeasure, describe, parse_risk

GOOD = ["mean", "cvar:alpha=0.1", "cvar", "ce:lam=1", "exp_utility:lam=2", "exp_utility:lam=-0.5", "quantile:tau=0.05",
        "mean_minus_std:c=2", "mean_minus_variance:beta=0.5", "expectation"]
BAD = ["exp_utility", "cvar:beta=2", "cvar:alpha=0", "cvar:alpha=1.5", "quantile:tau=1.5", "sharpe", "cvar:alpha=abc",
       "cvar:alpha=nan", "exp_utility:lam=-1000", "exp_utility:lam=0", "cvar:0.1", "mean:c=1"]


def _python(spec: str) -> bool:
    try:
        parse_risk(spec)
        return True
    except ValueError:
        return False


def _cli(spec: str, tmp_path, capsys) -> bool:
    from distrm.cli import main

    missing = tmp_path / "no-such-model"
    capsys.readouterr()  # drop what other steps printed
    rc = main(["score", str(missing), "--prompt", "p", "--response", "r", "--risk", spec])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err  # one line
    # a good spec gets as far as the (missing) model; a bad one is refused before it
    return str(missing) in err


def _yaml(spec: str, tmp_path) -> bool:
    from distrm.rl.rloo import load_run_config

    p = tmp_path / "rl.yaml"
    p.write_text(f"reward:\n  risk: '{spec}'\n")
    try:
        load_run_config(p)
        return True
    except ValueError:
        return False


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from _serve_support import build_model_dir, running_server

    from distrm.models.qrm import DistributionalRewardModel
    from distrm.serve.app import ServeConfig

    model_dir = build_model_dir(tmp_path_factory.mktemp("risk_model"))
    with running_server(model_dir, ServeConfig(warmup=False)) as url:
        yield url, DistributionalRewardModel.from_pretrained(model_dir)


def _http(spec: str, url: str) -> tuple[bool, float | None]:
    r = httpx.post(f"{url}/score", json={"items": [{"prompt": "Hi?", "response": "Hello!"}], "risks": [spec]}, timeout=60)
    if r.status_code == 422:
        assert len(r.text) < 2000
        return False, None
    assert r.status_code == 200, r.text
    return True, r.json()["results"][0]["risk"][spec]


@pytest.mark.parametrize("spec", GOOD + BAD)
def test_every_entry_point_agrees(spec, tmp_path, capsys, monkeypatch, served):
    import distrm.features.backbones
    import distrm.models.qrm

    url, model = served
    expected = spec in GOOD
    got_http, value = _http(spec, url)

    def boom(*a, **k):  # pragma: no cover - reaching it is the failure
        raise AssertionError("a model or backbone was loaded for a bad risk spec")

    if not expected:
        monkeypatch.setattr(distrm.features.backbones.Backbone, "from_pretrained", boom)
        monkeypatch.setattr(distrm.models.qrm.DistributionalRewardModel, "from_pretrained", boom)
    assert _python(spec) is expected
    assert _cli(spec, tmp_path, capsys) is expected
    assert _yaml(spec, tmp_path) is expected
    assert got_http is expected
    if expected:  # identical values: the server and Python evaluate the same measure
        want = RiskMeasure.parse(spec)(model.score(["Hi?"], ["Hello!"]).reward)
        assert torch.allclose(torch.as_tensor(value, dtype=torch.float64), want.double(), atol=1e-5)


def test_errors_name_the_vocabulary():
    with pytest.raises(ValueError) as e:
        parse_risk("sharpe")
    msg = str(e.value)
    assert "\n" not in msg and describe() in msg
    for name in ("cvar:alpha=", "exp_utility:lam=", "quantile:tau=", "mean_minus_std:c="):
        assert name in msg
    assert parse_risk({"name": "ce", "lam": "2"}) == ("certainty_equivalent", {"lam": 2.0})
    assert RiskMeasure.parse("cvar:alpha=0.25").spec == "cvar:alpha=0.25"
