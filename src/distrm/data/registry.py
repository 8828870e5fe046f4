"""Short names for the shared datasets, and one entry point for names, files and Hub ids.

    from distrm.data import registry
    registry.load_pairs("hh-rlhf")                      # shared data, found automatically
    registry.load_rated("dices-990", data_dir="/data")
    registry.load_pairs("rewardbench.jsonl")            # any file (RewardBench format default)
    registry.load_pairs("allenai/reward-bench")         # the Hub (fails clearly offline)
    registry.load_prompts("imdb"); registry.load_bon()  # RL prompts; best-of-N set

The data folder is, in order: the ``data_dir`` argument, ``$DISTRM_DATA_DIR``,
``../shared/data`` from the current directory, ``../shared/data`` from the repository root.

Default sets (:func:`load_default_training_data`, :func:`load_default_eval_data`):

* rated, for the attribute (quantile) heads: UltraFeedback overall score, HelpSteer2
  fixture, Prometheus MT-Bench and Vicuna (3 GPT-4 raters), DICES-990 and DICES-350
  (crowd raters), Newsroom (3 raters x 4 attributes), Recipes (15-88 raters x 6),
  ConvAbuse (2-7 annotators), PKU-SafeRLHF is_safe. Most are multi-rater: their
  disagreement is the spread the model should learn.
* pairs, for the gate / Bradley-Terry: HH-RLHF harmless, UltraFeedback, PKU-SafeRLHF, Orca.
* evaluation only, never in the training defaults: LLMBar (RewardBench Chat Hard) and
  Auto-J pairwise, which exist to measure preference accuracy on held-out judgments.

Training sets are split by prompt hash (:mod:`distrm.data.splits`); the eval counterpart
returns their test side plus the evaluation-only sets whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal

from distrm.data import shared
from distrm.data.bon import BonSet, load_rewardbench_bon
from distrm.data.generic import hub_names, load_hub, load_pairs_file, load_prompts_file, load_rated_file
from distrm.data.io import DataError, file_format
from distrm.data.records import LoadReport, Loaded, PreferencePair, RatedResponse
from distrm.data.splits import split

Kind = Literal["pairs", "rated", "prompts", "bon"]


@dataclass(frozen=True)
class Dataset:
    name: str
    folder: str  # under the data folder
    loaders: dict[str, Callable[..., Any]]  # kind -> f(data_dir, strict=...)
    description: str
    aliases: tuple[str, ...] = ()
    eval_only: bool = False
    subset: str | None = None  # a registry name for one subset of a set (llmbar-natural)

    @property
    def kinds(self) -> list[str]:
        return list(self.loaders)


def _hh_prompts(data_dir, strict=False):
    return shared.pair_prompts(shared.load_hh_rlhf(data_dir, strict))


def _pku_prompts(data_dir, strict=False):
    return shared.pair_prompts(shared.load_pku_pairs(data_dir, strict))


_DATASETS: list[Dataset] = [
    Dataset("hh-rlhf", "hh-rlhf", {"pairs": shared.load_hh_rlhf, "prompts": _hh_prompts}, "HH-RLHF harmless-base test: 2,312 transcript pairs", ("hh-rlhf-harmless", "hh")),
    Dataset(
        "ultrafeedback", "ultrafeedback-binarized-sample", {"pairs": shared.load_ultrafeedback_pairs, "rated": shared.load_ultrafeedback_rated},
        "UltraFeedback binarized sample: 1,200 pairs + overall score 1-10", ("ultrafeedback-binarized", "uf"),
    ),
    Dataset(
        "pku-saferlhf", "pku-saferlhf-dpo5k", {"pairs": shared.load_pku_pairs, "rated": shared.load_pku_rated, "prompts": _pku_prompts},
        "PKU-SafeRLHF: 5,135 safe-vs-unsafe pairs + binary is_safe", ("pku",),
    ),
    Dataset("orca", "orca-dpo-pairs", {"pairs": shared.load_orca}, "Orca DPO pairs (chat): 284", ("orca-dpo", "orca-dpo-pairs")),
    Dataset("llmbar", "llmbar", {"pairs": shared.load_llmbar}, "LLMBar = RewardBench Chat Hard llmbar-* (100/134/92/47/46)", eval_only=True),
    *[
        Dataset(sub, "llmbar", {"pairs": shared.load_llmbar}, f"LLMBar subset {sub}", eval_only=True, subset=sub)
        for sub in shared.LLMBAR_SUBSETS
    ],
    Dataset("autoj", "prometheus", {"pairs": shared.load_autoj}, "Auto-J pairwise test: 1,392 rows, ties skipped", ("autoj-pairwise", "auto-j"), eval_only=True),
    Dataset(
        "prometheus-mtbench", "prometheus", {"rated": partial(shared.load_prometheus, which="mt-bench")},
        "Prometheus MT-Bench grading: 320 responses x 3 GPT-4 scores (1-5)", ("prometheus-mt-bench",),
    ),
    Dataset("prometheus-vicuna", "prometheus", {"rated": partial(shared.load_prometheus, which="vicuna")}, "Prometheus Vicuna grading: 320 responses x 3 GPT-4 scores (1-5)"),
    Dataset("dices-990", "judge-bench", {"rated": partial(shared.load_dices, which="990")}, "DICES-990: 990 conversations x 69-76 safety raters"),
    Dataset("dices-350", "judge-bench", {"rated": partial(shared.load_dices, which="350")}, "DICES-350: 350 conversations x 123 safety raters"),
    Dataset("newsroom", "judge-bench", {"rated": shared.load_newsroom}, "Newsroom: 420 summaries x 3 raters x 4 attributes (1-5)"),
    Dataset("recipes", "judge-bench", {"rated": shared.load_recipes}, "Rewritten recipes: 52 x 15-88 raters x 6 attributes (1-6)"),
    Dataset("convabuse", "convabuse", {"rated": shared.load_convabuse}, "ConvAbuse: 4,185 user turns x 2-7 annotators, abuse 1..-3"),
    Dataset("helpsteer2-fixture", "helpsteer2-nemo-aligner-fixture", {"rated": shared.load_helpsteer2_fixture}, "HelpSteer2 NeMo fixture: 8 rows x 5 attributes (0-4)", ("helpsteer2",)),
    Dataset("beavertails-prompts", "pku-saferlhf-dpo5k", {"prompts": shared.load_beavertails_prompts}, "BeaverTails eval: 140 red-team prompts", ("beavertails",)),
    Dataset("imdb", "imdb-sample", {"prompts": shared.load_imdb_prompts}, "IMDB sample: 1,000 review prefixes (RL prompts)", ("imdb-sample",)),
    Dataset("rewardbench-bon", "rewardbench-bon", {"bon": load_rewardbench_bon}, "RewardBench AlpacaEval best-of-16 + GPT-4-turbo verdicts (samples 0-10)", ("bon",)),
]
DATASETS: dict[str, Dataset] = {d.name: d for d in _DATASETS}
_ALIASES: dict[str, str] = {a: d.name for d in _DATASETS for a in d.aliases}

DEFAULT_TRAIN_RATED = (
    "ultrafeedback", "helpsteer2-fixture", "prometheus-mtbench", "prometheus-vicuna",
    "dices-990", "dices-350", "newsroom", "recipes", "convabuse", "pku-saferlhf",
)  # fmt: skip
DEFAULT_TRAIN_PAIRS = ("hh-rlhf", "ultrafeedback", "pku-saferlhf", "orca")
EVAL_ONLY_PAIRS = ("llmbar", "autoj")


def names(include_subsets: bool = False) -> list[str]:
    return [d.name for d in _DATASETS if include_subsets or d.subset is None]


def get(name: str) -> Dataset:
    key = _ALIASES.get(name, name)
    if key not in DATASETS:
        raise KeyError(f"{name!r}: unknown dataset (known: {', '.join(names())}; or give a file path or a Hub id owner/name)")
    return DATASETS[key]


def default_data_dir(data_dir: str | Path | None = None) -> Path:
    """The shared data folder (see the module docstring for the order)."""
    if data_dir:
        return Path(data_dir)
    env = os.environ.get("DISTRM_DATA_DIR")
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[3]
    candidates = [Path.cwd().parent / "shared" / "data", repo_root.parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError(f"no shared data folder: tried {', '.join(map(str, candidates))}; pass --data-dir or set DISTRM_DATA_DIR")


@dataclass
class Resolved:
    """What a name or path refers to."""

    kind: Literal["registry", "file", "hub"]
    name: str
    path: Path | None = None
    dataset: Dataset | None = None
    kinds: list[str] = field(default_factory=list)


def resolve(name_or_path: str | Path, data_dir: str | Path | None = None) -> Resolved:
    """A registry name (or alias), an existing file, or a known Hub id (owner/name)."""
    s = str(name_or_path)
    if s in DATASETS or s in _ALIASES:
        ds = get(s)
        root = default_data_dir(data_dir)
        folder = root / ds.folder
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: not found; dataset {ds.name!r} lives in <data dir>/{ds.folder} (pass --data-dir or set DISTRM_DATA_DIR)")
        return Resolved("registry", ds.name, folder, ds, ds.kinds)
    p = Path(s).expanduser()
    if p.is_file():
        file_format(p)  # unknown extension -> clear error now
        return Resolved("file", p.name, p, None, ["pairs", "rated", "prompts"])
    if p.is_dir():
        raise DataError(f"{p}: is a directory; give a data file, or a dataset name with --data-dir {p}")
    if "/" in s and not s.startswith((".", "/", "~")) and s.count("/") == 1 and not p.suffix:
        return Resolved("hub", s, None, None, [k for k in ("pairs", "rated") if s in hub_names()])
    raise FileNotFoundError(f"{s!r}: not a dataset name ({', '.join(names())}), not an existing file, and not a Hub id (owner/name)")


def _load(kind: str, name_or_path: str | Path, data_dir, strict: bool, file_loader: Callable, **kwargs: Any):
    r = resolve(name_or_path, data_dir)
    if r.kind == "file":
        return file_loader(r.path, strict=strict, **kwargs)
    if r.kind == "hub":
        return load_hub(r.name, kind, strict=strict, **kwargs)
    ds = r.dataset
    if kind not in ds.loaders:
        raise DataError(f"{ds.name!r} has no {kind} (it gives: {', '.join(ds.kinds)})")
    loaded = ds.loaders[kind](default_data_dir(data_dir), strict=strict, **kwargs)
    if ds.subset is not None:  # one llmbar subset: keep its records, same report
        loaded = Loaded([x for x in loaded.records if getattr(x, "subset", None) == ds.subset], loaded.report)
    return loaded


def load_pairs(name_or_path: str | Path, data_dir: str | Path | None = None, strict: bool = False, **kwargs: Any) -> Loaded[PreferencePair]:
    """Preference pairs of a registered set, a file (:func:`load_pairs_file` keyword
    arguments for the field mapping) or a Hub dataset."""
    return _load("pairs", name_or_path, data_dir, strict, load_pairs_file, **kwargs)


def load_rated(name_or_path: str | Path, data_dir: str | Path | None = None, strict: bool = False, **kwargs: Any) -> Loaded[RatedResponse]:
    """Rated responses of a registered set, a file (:func:`load_rated_file` keywords:
    ``attributes``, ``scale``, ...) or a Hub dataset."""
    return _load("rated", name_or_path, data_dir, strict, load_rated_file, **kwargs)


def load_prompts(name_or_path: str | Path, data_dir: str | Path | None = None, strict: bool = False, **kwargs: Any) -> Loaded:
    """RL prompts (``records``: text or chat messages): beavertails-prompts, imdb, and the
    distinct prompts of hh-rlhf and pku-saferlhf; or a file with a ``prompt`` field."""
    return _load("prompts", name_or_path, data_dir, strict, load_prompts_file, **kwargs)


def load_bon(data_dir: str | Path | None = None, strict: bool = False) -> BonSet:
    """The RewardBench best-of-16 set with judge verdicts."""
    return load_rewardbench_bon(default_data_dir(data_dir), strict=strict)


def load_all(name_or_path: str | Path, data_dir: str | Path | None = None, strict: bool = False) -> dict[str, Any]:
    """Everything a registered set gives, by kind (for ``distrm data inspect``). A file is
    tried as pairs (RewardBench format), then as prompts."""
    r = resolve(name_or_path, data_dir)
    if r.kind == "registry":
        root = default_data_dir(data_dir)
        out = {}
        for kind in r.dataset.kinds:
            out[kind] = _load(kind, r.name, root, strict, lambda *a, **k: None)
        return out
    if r.kind == "hub":
        return {k: load_hub(r.name, k, strict=strict) for k in r.kinds or ["pairs"]}
    if _sniff_kind(r.path) == "pairs":
        return {"pairs": load_pairs_file(r.path, strict=strict)}
    return {"prompts": load_prompts_file(r.path, strict=strict)}


def _sniff_kind(path: Path) -> str:
    """"pairs" when the first readable row has chosen and rejected, else "prompts"."""
    from distrm.data.io import read_rows

    for row in read_rows(path):
        if row.error is None and isinstance(row.data, dict):
            return "pairs" if {"chosen", "rejected"} <= set(row.data) else "prompts"
    return "pairs"


def _gather(kind: str, sets: tuple[str, ...], data_dir, strict: bool, reports: dict[str, LoadReport]) -> list:
    out: list = []
    for name in sets:
        loaded = (load_pairs if kind == "pairs" else load_rated)(name, data_dir=data_dir, strict=strict)
        reports[f"{name} ({kind})"] = loaded.report
        out += loaded.records
    return out


def load_default_training_data(
    data_dir: str | Path | None = None, strict: bool = False, test_fraction: float | None = None
) -> tuple[list[RatedResponse], list[PreferencePair], dict[str, LoadReport]]:
    """(rated, pairs, reports) of the default training sets (module docstring).

    ``test_fraction=None`` returns every record and leaves splitting to the caller (as
    ``distrm.training.qrm`` does with its configured fraction); a number returns the train side
    of :func:`distrm.data.splits.split` directly. Reports are keyed "<name> (<kind>)".
    """
    reports: dict[str, LoadReport] = {}
    rated = _gather("rated", DEFAULT_TRAIN_RATED, data_dir, strict, reports)
    pairs = _gather("pairs", DEFAULT_TRAIN_PAIRS, data_dir, strict, reports)
    if test_fraction is not None:
        rated, pairs = split(rated, "train", test_fraction), split(pairs, "train", test_fraction)
    return rated, pairs, reports


def load_default_eval_data(
    data_dir: str | Path | None = None, strict: bool = False, test_fraction: float = 0.2
) -> tuple[list[RatedResponse], list[PreferencePair], dict[str, LoadReport]]:
    """(rated, pairs, reports) for evaluation: the test side of the default training sets
    (same prompt-hash split, so disjoint from their training side) plus the
    evaluation-only pair sets (LLMBar, Auto-J) whole."""
    rated, pairs, reports = load_default_training_data(data_dir, strict)
    rated, pairs = split(rated, "test", test_fraction), split(pairs, "test", test_fraction)
    pairs += _gather("pairs", EVAL_ONLY_PAIRS, data_dir, strict, reports)
    return rated, pairs, reports
