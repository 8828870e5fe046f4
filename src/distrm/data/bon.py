"""RewardBench's AlpacaEval best-of-N set: 805 prompts x 16 Tulu-2-DPO-13B samples, and
for samples 0-10 the GPT-4-turbo judge's preference against GPT-3.5-turbo's answer.

AlpacaEval's ``preference`` is in [1, 2] (1 = the reference, output_1, wins; 2 = the
candidate, output_2, wins; weighted by the judge's token probabilities), so the
candidate's win probability is ``preference - 1``. Samples 11-15 have no verdict (None).
A verdict whose candidate text differs from the sample file is counted and left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from distrm.data.io import EMPTY_RESPONSE, MISSING, DataError, Reporter, read_rows
from distrm.data.records import LoadReport


@dataclass
class BonPrompt:
    id: str  # "rewardbench-bon:<alpaca_eval index>"
    prompt: str
    dataset: str  # AlpacaEval's sub-source (helpful_base, koala, oasst, selfinstruct, vicuna)
    candidates: list[str]  # sample k at index k ("" if that sample is missing, see report)
    # per candidate: the judge's win probability vs GPT-3.5-turbo in [0, 1], None if not judged
    win_prob: list[float | None]
    reference: str | None = None  # GPT-3.5-turbo's answer

    def judged(self) -> list[int]:
        """Indices of candidates that have a verdict."""
        return [k for k, w in enumerate(self.win_prob) if w is not None]

    @property
    def file_id(self) -> str:
        """The prompt's id as the sample files write it (AlpacaEval's index), without the
        ``rewardbench-bon:`` prefix: the key other tools align on."""
        return self.id.removeprefix(_ID_PREFIX)


@dataclass
class BonSet:
    prompts: list[BonPrompt]
    report: LoadReport
    n_samples: int = 16
    judge: str = "weighted_alpaca_eval_gpt4_turbo"
    reference_model: str = "gpt-3.5-turbo-0613"
    judged_samples: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)


_ID_PREFIX = "rewardbench-bon:"
_SAMPLE = re.compile(r"tulu-2-dpo-13b\.(\d+)\.json(\.gz)?\Z")


def _by_sample(folder: Path) -> dict[int, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not found")
    out = {int(m.group(1)): p for p in folder.iterdir() if (m := _SAMPLE.search(p.name))}
    if not out:
        raise DataError(f"{folder}: no tulu-2-dpo-13b.<k>.json[.gz] files")
    return out


def load_rewardbench_bon(data_dir: str | Path, strict: bool = False) -> BonSet:
    """The best-of-16 candidates and judge verdicts, one :class:`BonPrompt` per prompt.

    ``data_dir`` is the shared data folder (the parent of ``rewardbench-bon/``)."""
    return load_bon_folder(Path(data_dir) / "rewardbench-bon", strict)


def load_bon_folder(root: str | Path, strict: bool = False, n_samples: int | None = None) -> BonSet:
    """:func:`load_rewardbench_bon` given the ``rewardbench-bon`` folder itself.

    ``n_samples`` reads only samples ``0 .. n_samples-1`` (and their verdicts), so a caller
    that needs the first few candidates does not parse all 16 files; a sample asked for by
    number whose file is missing is a :class:`FileNotFoundError`, not a counted gap, since
    the caller cannot do without it. ``None`` reads every sample file there is."""
    root = Path(root)
    rep = Reporter("rewardbench-bon", strict)
    outputs = _by_sample(root / "outputs")
    annotations = _by_sample(root / "annotations_gpt4t_vs_gpt35")
    if n_samples is None:
        n = max(outputs) + 1
    else:
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}")
        n = n_samples
        absent = [k for k in range(n) if k not in outputs]
        if absent:
            raise FileNotFoundError(f"{root / 'outputs'}: no tulu-2-dpo-13b.<k>.json[.gz] for sample(s) {absent}")
    prompts: dict[str, BonPrompt] = {}
    order: list[str] = []
    for k in range(n):
        if k not in outputs:
            rep.skip(MISSING, str(root / "outputs"), f"no file for sample {k}")
            continue
        for row in read_rows(outputs[k]):
            rep.read()
            if row.error or not isinstance(row.data, dict):
                rep.skip(row.error[0] if row.error else "row is not an object", row.where, row.error[1] if row.error else "")
                continue
            r = row.data
            pid, instr, out = str(r.get("id", "")), r.get("instruction"), r.get("output")
            if not pid or not isinstance(instr, str) or not isinstance(out, str):
                rep.skip(MISSING, row.where, "id / instruction / output")
                continue
            if pid not in prompts:
                prompts[pid] = BonPrompt(f"{_ID_PREFIX}{pid}", instr, str(r.get("dataset", "")), [""] * n, [None] * n)
                order.append(pid)
            elif prompts[pid].prompt != instr:
                rep.skip("prompt differs across samples", row.where, f"id {pid}")
                continue
            if not out.strip():
                rep.skip(EMPTY_RESPONSE, row.where, f"sample {k}, kept as an empty candidate")
            prompts[pid].candidates[k] = out
    judged = sorted(k for k in annotations if k < n)
    for k in judged:
        for row in read_rows(annotations[k]):
            rep.read()
            if row.error or not isinstance(row.data, dict):
                rep.skip(row.error[0] if row.error else "row is not an object", row.where, row.error[1] if row.error else "")
                continue
            r = row.data
            pid, pref = str(r.get("id", "")), r.get("preference")
            bp = prompts.get(pid)
            if bp is None:
                rep.skip(MISSING, row.where, f"verdict for unknown prompt id {pid!r}")
                continue
            if not isinstance(pref, (int, float)) or not 1.0 <= pref <= 2.0:
                rep.skip("score out of scale", row.where, f"preference={pref!r}, expected [1, 2]")
                continue
            if r.get("output_2") != bp.candidates[k]:
                rep.skip("verdict for a different candidate text", row.where, f"id {pid} sample {k}")
                continue
            bp.win_prob[k] = float(pref) - 1.0
            if bp.reference is None and isinstance(r.get("output_1"), str):
                bp.reference = r["output_1"]
    return BonSet([prompts[p] for p in order], rep.report, n_samples=n, judged_samples=judged)
