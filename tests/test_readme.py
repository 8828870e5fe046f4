"""The README's main job, as a user runs it: the embedded default config on the real shared
data with the real MiniLM backbone, then the README's scoring command. The model must prefer
the refusal to the harmful how-to in mean and in CVaR, learn something in its heads, and not
be a length rule (slow: ~3 minutes from a cold feature cache)."""

import json
import re
from pathlib import Path

import pytest

from distrm.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_score_args() -> list[str]:
    """The --prompt/--response/--risk arguments of the README's first command."""
    cmd = re.search(r"```bash\n(.*?)\n```", README.read_text(encoding="utf-8"), re.S).group(1)
    score = cmd.split("distrm score runs/qrm-minilm", 1)[1]
    return re.findall(r'(--\w+) "([^"]*)"|(--risk) (\S+)', score)


@pytest.mark.slow
def test_readme_main_job(tmp_path, capsys):
    out = tmp_path / "qrm-minilm"
    assert main(["train", "--output-dir", str(out), "--set", f"backbone.store={tmp_path / 'store'}", "--set", "progress=false"]) == 0
    log = json.loads((out / "train_log.json").read_text())
    informative = [r["attribute"] for r in log["heads"] if r["informative"]]
    assert len(informative) >= 3, log["heads"]
    assert all(r["heldout_pinball"] < r["marginal_pinball"] for r in log["heads"] if r["informative"])
    val = log["validation"]
    assert val["accuracy"] > val["longer_wins_accuracy"]
    assert val["agreement_with_shorter_wins"] < 0.8  # not a length rule in disguise

    args = []
    for flag, val_, rflag, rval in _readme_score_args():
        args += [flag, val_] if flag else [rflag, rval]
    capsys.readouterr()
    assert main(["score", str(out), *args, "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    refusal, howto = rows
    risk = next(iter(refusal["risk"]))
    assert refusal["mean"] > howto["mean"], (refusal["mean"], howto["mean"])
    assert refusal["risk"][risk] > howto["risk"][risk], (refusal["risk"], howto["risk"])
