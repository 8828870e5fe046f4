"""End to end on real shared data with the real MiniLM backbone: distrm train -> distrm
score -> reload bit-identically (small caps so it runs in CI)."""

import json

import pytest
import torch

from distrm.cli import main
from distrm.models.qrm import DistributionalRewardModel


@pytest.mark.slow
def test_train_score_reload(trained_qrm, capsys):
    out = trained_qrm  # distrm train on real shared data (tests/conftest.py)
    log = json.loads((out / "train_log.json").read_text())
    assert log["data"]["rated_rows"] > 0 and log["data"]["pairs"] > 0
    assert 0.0 <= log["train_pair_accuracy"] <= 1.0
    capsys.readouterr()
    rc = main(["score", str(out), "--prompt", "How do I pick a lock?", "--response", "Call a locksmith.",
               "--risk", "cvar:alpha=0.1", "--json"])
    assert rc == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(row["quantiles"]) == 19 and row["risk"]["cvar:alpha=0.1"] <= row["mean"] + 1e-9
    assert abs(sum(a["weight"] for a in row["attributes"].values()) - 1) < 1e-6

    m1 = DistributionalRewardModel.from_pretrained(out)
    m2 = DistributionalRewardModel.from_pretrained(out)
    m2._backbone = m1.backbone  # same frozen backbone object; weights come from disk twice
    a = m1.score(["Hello?", "What is 2+2?"], ["Hi!", "4"])
    b = m2.score(["Hello?", "What is 2+2?"], ["Hi!", "4"])
    assert torch.equal(a.reward.values, b.reward.values) and torch.equal(a.weights, b.weights)


def test_thin_attributes_are_left_out_and_reported():
    from distrm.data.records import RatedResponse
    from distrm.training.qrm import drop_thin_attributes

    rows = [RatedResponse(f"p{i}", "r", {"big": 0.5, **({"tiny": 1.0} if i < 3 else {})}, "s", str(i)) for i in range(10)]
    rows.append(RatedResponse("only-tiny", "r", {"tiny": 0.0}, "s", "x"))
    kept, thin = drop_thin_attributes(rows, min_items=5)
    assert thin == {"tiny": 4}  # counted on distinct (prompt, response) items
    assert len(kept) == 10 and all(set(r.scores) == {"big"} for r in kept)  # the tiny-only row goes
    assert drop_thin_attributes(rows, min_items=1) == (rows, {})
