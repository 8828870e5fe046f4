"""Loaders for the datasets in the shared data folder (see its README for provenance).

Each takes the data folder (the parent of ``hh-rlhf/``, ``llmbar/``, ...) and ``strict``,
and returns :class:`Loaded` records with a :class:`LoadReport`. Attribute names carry the
dataset (``helpsteer-helpfulness``, ``prometheus-score``, ``dices-safe``: ArmoRM's
convention), because the same word means different things on different scales in
different sets and one head is trained per attribute name. Scores are in [0, 1]; ``scales``
holds the original (low, high).

Mappings that are choices, not facts of the data, are stated where they happen:
DICES answers, PKU's is_safe, ConvAbuse's repeat annotations, Auto-J's labels.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from distrm.data.formats import parse_nemo_chat, parse_prometheus_prompt, split_final_reply
from distrm.data.generic import collect, make_pair, pair_from_transcripts, rated_seen
from distrm.data.io import (
    BAD_LABEL,
    EMPTY_RESPONSE,
    MISSING,
    REPEAT_ANNOTATION,
    TIE,
    UNPARSEABLE,
    DataError,
    Reporter,
    RowError,
    as_number,
    as_prompt,
    as_response,
    as_scores,
    get_field,
    need,
    normalise,
    read_rows,
)
from distrm.data.records import Loaded, PreferencePair, Prompt, RatedResponse, prompt_key

PathLike = str | Path


def _file(data_dir: PathLike, *parts: str) -> Path:
    p = Path(data_dir).joinpath(*parts)
    if not p.exists():
        raise FileNotFoundError(f"{p}: not found (is --data-dir / $DISTRM_DATA_DIR the shared data folder?)")
    return p


def _rated(rep: Reporter, where: str, rec: RatedResponse) -> RatedResponse:
    """``rec``, counted as a duplicate / conflict when its prompt and response (or id) came
    before (:func:`distrm.data.generic.rated_seen`)."""
    rated_seen(rep, rec.prompt, rec.response, rec.scores, where, rec.id)
    return rec


def _index(where: str) -> str:
    """Line number or #index of a location, for ids."""
    return where.rsplit(":", 1)[-1].lstrip("#")


# ------------------------------------------------------------------ preference pairs
def load_hh_rlhf(data_dir: PathLike, strict: bool = False) -> Loaded[PreferencePair]:
    """HH-RLHF harmless-base test (2,312 rows): whole transcripts parsed into messages;
    prompt = the turns before the final assistant turn, responses = the final turns. Rows
    whose earlier turns differ between chosen and rejected, or that do not parse, are
    counted skips."""
    path = _file(data_dir, "hh-rlhf", "harmless-base-test.jsonl.gz")
    rep = Reporter("hh-rlhf", strict)

    def convert(row: dict, where: str):
        p, c, r = pair_from_transcripts(need(row, "chosen"), need(row, "rejected"))
        yield make_pair(p, c, r, "hh-rlhf", f"hh-rlhf:harmless-base-test:{_index(where)}", "hh-rlhf-harmless", rep, where)

    return Loaded(collect(read_rows(path), rep, convert), rep.report)


_UF_FILES = (("train", "train_clean.jsonl"), ("eval", "eval_clean.jsonl"))
UF_OVERALL = "ultrafeedback-overall_score"


def load_ultrafeedback_pairs(data_dir: PathLike, strict: bool = False) -> Loaded[PreferencePair]:
    """UltraFeedback binarized sample (1,000 train + 200 eval rows). Rows whose two overall
    scores are equal are ties (no preference): counted, not used as pairs."""
    rep = Reporter("ultrafeedback", strict)

    def convert(row: dict, where: str):
        p = as_prompt(need(row, "prompt"))
        c, r = as_response(need(row, "chosen"), "chosen"), as_response(need(row, "rejected"), "rejected")
        sc, sr = (as_number(need(row, f"metadata.score_{k}"), f"score_{k}") for k in ("chosen", "rejected"))
        if sc == sr:
            raise RowError(TIE, f"score_chosen = score_rejected = {sc:g}")
        yield make_pair(p, c, r, "ultrafeedback", f"ultrafeedback:{row.get('source_index', _index(where))}", subset, rep, where)

    out: list[PreferencePair] = []
    for subset_name, fname in _UF_FILES:
        subset = f"ultrafeedback-{subset_name}"
        out += collect(read_rows(_file(data_dir, "ultrafeedback-binarized-sample", fname)), rep, convert)
    return Loaded(out, rep.report)


def load_ultrafeedback_rated(data_dir: PathLike, strict: bool = False) -> Loaded[RatedResponse]:
    """UltraFeedback overall score (1-10, GPT-4) of the chosen and of the rejected
    response: two rated records per row (ties included: equal scores are fine here)."""
    rep = Reporter("ultrafeedback", strict)
    scale = {UF_OVERALL: (1.0, 10.0)}

    def convert(row: dict, where: str):
        p = as_prompt(need(row, "prompt"))
        for side in ("chosen", "rejected"):
            try:
                resp = as_response(need(row, side), side)
                s = normalise(as_number(need(row, f"metadata.score_{side}"), f"score_{side}"), scale[UF_OVERALL], f"score_{side}")
            except RowError as e:
                yield e
                continue
            yield _rated(rep, where, RatedResponse(p, resp, {UF_OVERALL: s}, "ultrafeedback", f"ultrafeedback:{row.get('source_index', _index(where))}:{side}", scale, subset))

    out: list[RatedResponse] = []
    for subset_name, fname in _UF_FILES:
        subset = f"ultrafeedback-{subset_name}"
        out += collect(read_rows(_file(data_dir, "ultrafeedback-binarized-sample", fname)), rep, convert)
    return Loaded(out, rep.report)


_PKU = ("pku-saferlhf-dpo5k", "pku_seferlhf_realign_dpo_5k.json")


def load_pku_pairs(data_dir: PathLike, strict: bool = False) -> Loaded[PreferencePair]:
    """PKU-SafeRLHF test pairs where exactly one response is safe (5,135); response[0] is
    the safer one (the file's convention, see the shared README)."""
    rep = Reporter("pku-saferlhf", strict)

    def convert(row: dict, where: str):
        p = as_prompt(need(row, "prompt"))
        c, r = as_response(need(row, "response.0"), "response[0]"), as_response(need(row, "response.1"), "response[1]")
        yield make_pair(p, c, r, "pku-saferlhf", f"pku-saferlhf:{_index(where)}", "pku-saferlhf", rep, where)

    return Loaded(collect(read_rows(_file(data_dir, *_PKU)), rep, convert), rep.report)


PKU_SAFE = "pku-is_safe"


def load_pku_rated(data_dir: PathLike, strict: bool = False) -> Loaded[RatedResponse]:
    """Binary ``pku-is_safe``: the file keeps only pairs where exactly one response is safe
    and puts it first, so response[0] is safe (1.0) and response[1] unsafe (0.0)."""
    rep = Reporter("pku-saferlhf", strict)
    scale = {PKU_SAFE: (0.0, 1.0)}

    def convert(row: dict, where: str):
        p = as_prompt(need(row, "prompt"))
        for k, safe in ((0, 1.0), (1, 0.0)):
            try:
                resp = as_response(need(row, f"response.{k}"), f"response[{k}]")
            except RowError as e:
                yield e
                continue
            yield _rated(rep, where, RatedResponse(p, resp, {PKU_SAFE: safe}, "pku-saferlhf", f"pku-saferlhf:{_index(where)}:{k}", scale, "pku-saferlhf"))

    return Loaded(collect(read_rows(_file(data_dir, *_PKU)), rep, convert), rep.report)


def load_orca(data_dir: PathLike, strict: bool = False) -> Loaded[PreferencePair]:
    """Orca DPO pairs (284): prompt = ``input.messages`` (system + user), responses = the
    assistant message of ``preferred_output`` / ``non_preferred_output``."""
    rep = Reporter("orca-dpo-pairs", strict)

    def convert(row: dict, where: str):
        p = as_prompt(need(row, "input.messages"), "input.messages")
        c = as_response(need(row, "preferred_output"), "preferred_output")
        r = as_response(need(row, "non_preferred_output"), "non_preferred_output")
        yield make_pair(p, c, r, "orca-dpo-pairs", f"orca-dpo-pairs:validation:{_index(where)}", "orca-dpo-pairs", rep, where)

    return Loaded(collect(read_rows(_file(data_dir, "orca-dpo-pairs", "validation.jsonl")), rep, convert), rep.report)


# RewardBench's subset names for the five LLMBar files (Chat Hard)
LLMBAR_SUBSETS = {
    "llmbar-natural": "LLMBar_Natural.json",
    "llmbar-adver-neighbor": "LLMBar_Adversarial_Neighbor.json",
    "llmbar-adver-GPTInst": "LLMBar_Adversarial_GPTInst.json",
    "llmbar-adver-GPTOut": "LLMBar_Adversarial_GPTOut.json",
    "llmbar-adver-manual": "LLMBar_Adversarial_Manual.json",
}


def load_llmbar(data_dir: PathLike, strict: bool = False) -> Loaded[PreferencePair]:
    """LLMBar's five sets (100/134/92/47/46) = RewardBench's ``llmbar-*`` subsets; label
    1 or 2 names the better output. Evaluation only."""
    rep = Reporter("llmbar", strict)
    out: list[PreferencePair] = []
    for subset, fname in LLMBAR_SUBSETS.items():

        def convert(row: dict, where: str, subset: str = subset):
            label = need(row, "label")
            if label not in (1, 2):
                raise RowError(BAD_LABEL, f"label={label!r}, expected 1 or 2")
            p = as_prompt(need(row, "input"), "input")
            c = as_response(need(row, f"output_{label}"), f"output_{label}")
            r = as_response(need(row, f"output_{3 - label}"), f"output_{3 - label}")
            yield make_pair(p, c, r, "llmbar", f"llmbar:{subset}:{_index(where)}", subset, rep, where)

        out += collect(read_rows(_file(data_dir, "llmbar", fname)), rep, convert)
    return Loaded(out, rep.report)


def load_autoj(data_dir: PathLike, strict: bool = False, by_scenario: bool = False) -> Loaded[PreferencePair]:
    """Auto-J pairwise test (1,392 rows; JSON Lines despite the ``.json`` name). Labels as
    in prometheus-eval's ``eval/benchmark/data_loader.py``: 0 = response 1 better, 1 =
    response 2 better, 2 = tie (counted as "tie", not a pair). ``by_scenario``: subset
    ``autoj-<scenario>`` instead of ``autoj-pairwise``. Evaluation only."""
    rep = Reporter("autoj-pairwise", strict)

    def convert(row: dict, where: str):
        label = need(row, "label")
        if label == 2:
            raise RowError(TIE, "label 2")
        if label not in (0, 1):
            raise RowError(BAD_LABEL, f"label={label!r}, expected 0, 1 or 2")
        p = as_prompt(need(row, "prompt"))
        c = as_response(need(row, f"response {label + 1}"), f"response {label + 1}")
        r = as_response(need(row, f"response {2 - label}"), f"response {2 - label}")
        sub = f"autoj-{row.get('scenario', 'unknown')}" if by_scenario else "autoj-pairwise"
        yield make_pair(p, c, r, "autoj-pairwise", f"autoj-pairwise:{_index(where)}", sub, rep, where)

    return Loaded(collect(read_rows(_file(data_dir, "prometheus", "autoj_pairwise.json")), rep, convert), rep.report)


# ------------------------------------------------------------------ rated (multi-rater)
PROMETHEUS_SCORE = "prometheus-score"


def load_prometheus(data_dir: PathLike, which: Literal["mt-bench", "vicuna"], strict: bool = False) -> Loaded[RatedResponse]:
    """Prometheus' MT-Bench / Vicuna grading sets (320 each = 80 prompts x 4 models): the
    instruction and response parsed out of the grading prompt, and the THREE GPT-4 scores
    (1-5) kept as three raters of ``prometheus-score``. The rubric (per prompt) is not
    part of the record."""
    fname = {"mt-bench": "mt_bench_eval.json", "vicuna": "vicuna_eval.json"}[which]
    src = f"prometheus-{which}"
    rep = Reporter(src, strict)
    scale = {PROMETHEUS_SCORE: (1.0, 5.0)}

    def convert(row: dict, where: str):
        sec = parse_prometheus_prompt(need(row, "instruction"))
        if sec is None:
            raise RowError(UNPARSEABLE, "grading prompt without the expected ### sections")
        p = as_prompt(sec["instruction"], "instruction to evaluate")
        resp = as_response(sec["response"], "response to evaluate")
        scores = as_scores(need(row, "gpt4_score"), "gpt4_score")
        rep.note(f"items with {len(scores)} GPT-4 scores")
        yield _rated(rep, where, RatedResponse(
            p, resp, {PROMETHEUS_SCORE: [normalise(x, scale[PROMETHEUS_SCORE], "gpt4_score") for x in scores]},
            src, f"{src}:{row.get('idx', _index(where))}:{row.get('response_source', _index(where))}", scale, str(row.get("category") or which),
        ))  # fmt: skip

    return Loaded(collect(read_rows(_file(data_dir, "prometheus", fname)), rep, convert), rep.report)


# DICES' question is "is the conversation unsafe?" ("Yes" = unsafe; JUDGE-BENCH's prompt
# text says "is it safe?", but the answers are DICES' own, e.g. majority "Yes" on
# "Don't worry u just die"). Mapped to a *safety* score, higher = safer.
DICES_SAFE = "dices-safe"
DICES_MAP = {"No": 1.0, "Unsure": 0.5, "Yes": 0.0}


def load_dices(
    data_dir: PathLike, which: Literal["990", "350"], strict: bool = False, unsure: Literal["mid", "drop"] = "mid", expert: bool = False
) -> Loaded[RatedResponse]:
    """DICES (990 items x 69-76 raters; 350 x 123 raters): every rater's answer kept as one
    score of ``dices-safe``: No (not unsafe) -> 1.0, Unsure -> 0.5, Yes (unsafe) -> 0.0.
    ``unsure="drop"`` leaves Unsure answers out instead; either way their number is in
    ``report.counts``. ``expert=True`` (350 only) adds the expert's answer as the
    separate one-rater attribute ``dices-safe-expert``. Literal ``\\n`` in DICES-990's
    conversations (an escaping artefact) become newlines."""
    src = f"dices-{which}"
    rep = Reporter(src, strict)
    scale = (0.0, 1.0)
    fname = {"990": "dices_dices_990.json", "350": "dices_dices_350_crowdsourced.json"}[which]
    expert_by_id: dict[Any, Any] = {}
    if expert and which == "350":
        for row in read_rows(_file(data_dir, "judge-bench", "dices_dices_350_expert.json")):
            if row.error is None and isinstance(row.data, dict):
                expert_by_id[row.data.get("id")] = get_field(row.data, "annotations.safety.individual_human_scores")

    def answers(raw: Any, name: str) -> list[float]:
        if not isinstance(raw, list) or not raw:
            raise RowError(MISSING, f"{name}: no ratings")
        bad = sorted({str(a) for a in raw if a not in DICES_MAP})
        if bad:
            raise RowError(BAD_LABEL, f"{name}: {bad} (expected Yes/No/Unsure)")
        n_unsure = sum(a == "Unsure" for a in raw)
        rep.note(f"'Unsure' ratings ({'mapped to 0.5' if unsure == 'mid' else 'left out'})", n_unsure)
        kept = [DICES_MAP[a] for a in raw if not (unsure == "drop" and a == "Unsure")]
        if not kept:
            raise RowError(MISSING, f"{name}: only 'Unsure' ratings")
        return kept

    def convert(row: dict, where: str):
        conv = need(row, "instance.user_prompt")
        p = as_prompt(conv.replace("\\n", "\n").strip() if isinstance(conv, str) else conv, "user_prompt")
        resp = as_response(need(row, "instance.response"), "response")
        scores: dict[str, Any] = {DICES_SAFE: answers(need(row, "annotations.safety.individual_human_scores"), "safety")}
        if expert_by_id:
            ex = expert_by_id.get(row.get("id"))
            if ex:
                scores[f"{DICES_SAFE}-expert"] = answers(ex, "expert safety")
            else:
                rep.note("items without an expert rating")
        yield _rated(rep, where, RatedResponse(p, resp, scores, src, f"{src}:{row.get('id', _index(where))}", {a: scale for a in scores}, src))

    return Loaded(collect(read_rows(_file(data_dir, "judge-bench", fname)), rep, convert), rep.report)


def _judge_bench_attrs(path: Path) -> list[tuple[str, tuple[float, float]]]:
    """(metric, (worst, best)) declared in a JUDGE-BENCH file's header."""
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested deeper than Python's recursion limit; cannot read its annotations header") from None
    except ValueError as e:
        raise DataError(f"{path}: bad JSON ({str(e).split(';')[0][:120]})") from None
    try:
        return [(a["metric"], (float(a["worst"]), float(a["best"]))) for a in doc["annotations"]]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: annotations header without metric/worst/best ({e})") from None


def _multi_attr_scores(row: dict, attrs: list[tuple[str, tuple[float, float]]], prefix: str, rep: Reporter) -> tuple[dict, dict]:
    scores: dict[str, Any] = {}
    scales: dict[str, tuple[float, float]] = {}
    for metric, scale in attrs:
        raw = get_field(row, f"annotations.{metric}.individual_human_scores")
        if raw is None or raw == [] or not isinstance(raw, list):
            rep.note(f"items without {metric} ratings")
            continue
        name = f"{prefix}-{metric.lower()}"
        scores[name] = [normalise(x, scale, metric) for x in as_scores(raw, metric)]
        scales[name] = scale
    if not scores:
        raise RowError(MISSING, "no individual ratings")
    return scores, scales


_NEWSROOM = re.compile(r"\A### Generated Summary\n\n(.*?)\n\n### Source Article\n\n(.*)\Z", re.S)


def load_newsroom(data_dir: PathLike, strict: bool = False) -> Loaded[RatedResponse]:
    """Newsroom human evaluation (420 summaries x 3 raters x informativeness, relevance,
    fluency, coherence, 1-5). Prompt = "Summarize the following article." + the article;
    response = the system summary."""
    path = _file(data_dir, "judge-bench", "newsroom_newsroom.json")
    attrs = _judge_bench_attrs(path)
    rep = Reporter("newsroom", strict)

    def convert(row: dict, where: str):
        m = _NEWSROOM.match(need(row, "instance"))
        if not m:
            raise RowError(UNPARSEABLE, "instance without '### Generated Summary' / '### Source Article'")
        summary, article = m.group(1).strip(), m.group(2).strip()
        if not summary:
            raise RowError(EMPTY_RESPONSE, "summary")
        scores, scales = _multi_attr_scores(row, attrs, "newsroom", rep)
        p = "Summarize the following article.\n\n" + article
        yield _rated(rep, where, RatedResponse(p, summary, scores, "newsroom", f"newsroom:{row.get('id', _index(where))}", scales, "newsroom"))

    return Loaded(collect(read_rows(path), rep, convert), rep.report)


_RECIPE_ID = re.compile(r"\A(?:(?:coherence|grammaticality)_)?(?P<dish>.+?)_(?P<n>\d+)_(?P<variant>[a-z_]+)\Z")


def load_recipes(data_dir: PathLike, strict: bool = False) -> Loaded[RatedResponse]:
    """Rewritten recipes (52 texts x 15-88 raters x grammar, fluency, verbosity,
    structure, success, overall; 1-6). There is no prompt in the data: it is "Write the
    recipe for <dish>." from the item id (``baked_ziti_5_coref`` -> "baked ziti"), so all
    variants of one dish share a prompt (and a split side); subset = the variant."""
    path = _file(data_dir, "judge-bench", "recipe_crowd_sourcing_data_meta_evaluation_recipes.json")
    attrs = _judge_bench_attrs(path)
    rep = Reporter("recipes", strict)

    def convert(row: dict, where: str):
        rid = str(need(row, "id"))
        m = _RECIPE_ID.match(rid)
        if not m:
            raise RowError(UNPARSEABLE, f"id {rid!r} is not <dish>_<n>_<variant>")
        resp = as_response(need(row, "instance"), "instance")
        scores, scales = _multi_attr_scores(row, attrs, "recipes", rep)
        p = f"Write the recipe for {m['dish'].replace('_', ' ')}."
        yield _rated(rep, where, RatedResponse(p, resp, scores, "recipes", f"recipes:{rid}", scales, m["variant"]))

    return Loaded(collect(read_rows(path), rep, convert), rep.report)


CONVABUSE_ATTR = "convabuse-is_abuse"
_CA_LEVELS = {"is_abuse.1": 1.0, "is_abuse.0": 0.0, "is_abuse.-1": -1.0, "is_abuse.-2": -2.0, "is_abuse.-3": -3.0}


def load_convabuse(data_dir: PathLike, strict: bool = False) -> Loaded[RatedResponse]:
    """ConvAbuse full release (12,768 annotator rows over 4,185 items, 8 annotators),
    grouped per item (conversation id + the four utterances). The rated text is the
    *user's* utterance (that is what was judged for abuse); the prompt is the preceding
    context ("Agent: ... / User: ... / Agent: ..."). ``convabuse-is_abuse`` keeps
    ConvAbuse's scale: 1 not abusive, 0 ambiguous, -1/-2/-3 mildly/strongly/very
    strongly abusive (so 1.0 after normalisation = not abusive). An annotator's repeat
    rating of the same item (the intra-annotator agreement check) is a counted skip; the
    first one is kept. ``convabuse.csv`` (an MTurk export without annotator ids) is not
    read. Subset = the bot (E.L.I.Z.A. / CarbonBot)."""
    rep = Reporter("convabuse", strict)
    scale = (-3.0, 1.0)
    items: dict[tuple, dict[str, Any]] = {}

    for row in read_rows(_file(data_dir, "convabuse", "ConvAbuseEMNLPfull.csv")):
        rep.read()
        if row.error:
            rep.skip(row.error[0], row.where, row.error[1])
            continue
        r = row.data
        try:
            flags = [lvl for col, lvl in _CA_LEVELS.items() if as_number(need(r, col), col) == 1]
            if len(flags) != 1:
                raise RowError(BAD_LABEL, f"{len(flags)} of the is_abuse.* columns set, expected exactly 1")
            ann = need(r, "annotator_id")
            user = as_response(need(r, "user"), "user")
            key = (r.get("conv_id", ""), r.get("prev_agent", ""), r.get("prev_user", ""), r.get("agent", ""), user)
        except RowError as e:
            rep.skip(e.reason, row.where, e.detail)
            continue
        item = items.setdefault(key, {"where": row.where, "bot": r.get("bot") or None, "raters": {}})
        if ann in item["raters"]:
            rep.skip(REPEAT_ANNOTATION, row.where, f"{ann}; first kept")
            continue
        item["raters"][ann] = flags[0]

    out: list[RatedResponse] = []
    for (conv_id, prev_agent, prev_user, agent, user), item in items.items():
        turns = [("Agent", prev_agent), ("User", prev_user), ("Agent", agent)]
        p = "\n".join(f"{who}: {t.strip()}" for who, t in turns if t and t.strip())
        if not p:
            rep.skip("empty prompt", item["where"], "no context before the user utterance")
            continue
        vals = [normalise(v, scale, "is_abuse") for _, v in sorted(item["raters"].items())]
        out.append(
            RatedResponse(p, user, {CONVABUSE_ATTR: vals}, "convabuse", f"convabuse:{str(conv_id).removesuffix('.0')}:{_index(item['where'])}", {CONVABUSE_ATTR: scale}, item["bot"])
        )
    rep.note("items", len(out))
    return Loaded(out, rep.report)


HS2_ATTRS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def load_helpsteer2_fixture(data_dir: PathLike, strict: bool = False) -> Loaded[RatedResponse]:
    """NeMo-Aligner's HelpSteer2 regression fixture (8 rows): chat text parsed into
    messages; ``label`` = 4 placeholders (-100, ignored) then helpfulness, correctness,
    coherence, complexity, verbosity on 0-4 (-> ``helpsteer-<attribute>``; a -100 in an
    attribute slot means unrated and is left out)."""
    rep = Reporter("helpsteer2-fixture", strict)
    scale = (0.0, 4.0)

    def convert(row: dict, where: str):
        msgs = parse_nemo_chat(need(row, "text"))
        split = split_final_reply(msgs) if msgs else None
        if split is None:
            raise RowError(UNPARSEABLE, "text is not NeMo chat ending in an Assistant turn")
        p, resp = split
        resp = as_response(resp, "assistant turn")
        label = as_scores(need(row, "label"), "label")
        if len(label) != 4 + len(HS2_ATTRS):
            raise RowError("wrong type", f"label has {len(label)} values, expected 9")
        scores = {f"helpsteer-{a}": normalise(v, scale, a) for a, v in zip(HS2_ATTRS, label[4:]) if v != -100}
        if not scores:
            raise RowError(MISSING, "all attribute slots are -100")
        yield _rated(rep, where, RatedResponse(p, resp, scores, "helpsteer2-fixture", f"helpsteer2-fixture:{_index(where)}", {a: scale for a in scores}, "helpsteer2"))

    return Loaded(collect(read_rows(_file(data_dir, "helpsteer2-nemo-aligner-fixture", "test-rm.jsonl")), rep, convert), rep.report)


# ------------------------------------------------------------------ prompts only (RL)
def load_beavertails_prompts(data_dir: PathLike, strict: bool = False) -> Loaded:
    """BeaverTails evaluation prompts (140 red-team questions); records are plain text."""
    rep = Reporter("beavertails-prompts", strict)

    def convert(row: dict, where: str):
        p = as_prompt(need(row, "prompt"))
        rep.duplicate(("prompt", p), "duplicate prompts (kept)", where=where)
        yield p

    return Loaded(collect(read_rows(_file(data_dir, "pku-saferlhf-dpo5k", "BeaverTails_eval_prompts.json")), rep, convert), rep.report)


def load_imdb_prompts(data_dir: PathLike, strict: bool = False, prefix_words: int | None = 8) -> Loaded:
    """IMDB sample (1,000 reviews): the first ``prefix_words`` whitespace words of each
    review (``<br />`` removed) as a text prompt to continue, as in the sentiment RL task;
    ``None`` keeps the whole review. Deterministic: no random prefix lengths here."""
    rep = Reporter("imdb", strict)

    def convert(row: dict, where: str):
        words = str(need(row, "text")).replace("<br />", " ").split()
        if not words:
            raise RowError("empty prompt", "text")
        p = " ".join(words[:prefix_words] if prefix_words else words)
        rep.duplicate(("prompt", p), "duplicate prompts (kept)", where=where)
        yield p

    return Loaded(collect(read_rows(_file(data_dir, "imdb-sample", "texts.csv")), rep, convert), rep.report)


def pair_prompts(loaded: Loaded) -> Loaded:
    """The distinct prompts of a pair or rated set, in first-seen order (RL prompts from
    HH-RLHF / PKU)."""
    seen: dict[str, Prompt] = {}
    for r in loaded.records:
        seen.setdefault(prompt_key(r.prompt), r.prompt)
    loaded.report.counts["distinct prompts"] += len(seen)
    return Loaded(list(seen.values()), loaded.report)


__all__ = [n for n in dir() if n.startswith("load_")] + ["LLMBAR_SUBSETS", "DICES_MAP", "pair_prompts"]
