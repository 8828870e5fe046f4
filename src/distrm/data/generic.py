"""Loading any JSONL / JSON / CSV / Parquet file (or Hugging Face dataset) by field mapping.

Field names may be dotted paths into nested rows (``"metadata.score_chosen"``,
``"input.messages"``, ``"response.0"``). The defaults read RewardBench's format
(``prompt, chosen, rejected, subset, id``)::

    load_pairs_file("rb.jsonl")
    load_pairs_file("hh.jsonl", prompt=None)        # chosen/rejected are whole HH transcripts
    load_rated_file("hs2.jsonl", attributes={"helpfulness": "helpfulness"}, scale=(0, 4))

Hub names go through the real ``datasets.load_dataset`` (:func:`load_hub`); offline, that
fails with one clear line naming the local alternative.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from distrm.data.formats import parse_hh_transcript, split_final_reply
from distrm.data.io import (
    IDENTICAL,
    MISSING,
    NOT_OBJECT,
    PREFIX_DIFFERS,
    UNPARSEABLE,
    UNUSABLE,
    DataError,
    Reporter,
    Row,
    RowError,
    as_messages,
    as_number,
    as_prompt,
    as_response,
    as_scores,
    get_field,
    is_missing,
    need,
    normalise,
    normalise_all,
    read_rows,
)
from distrm.data.records import Loaded, PreferencePair, Prompt, RatedResponse, prompt_key

Convert = Callable[[Any, str], Iterable[Any]]


def collect(rows: Iterable[Row], rep: Reporter, convert: Convert) -> list:
    """Run ``convert(row, where)`` over rows; it yields records, or :class:`RowError`
    instances for parts of a row it skips (a row with two responses, one empty). A raised
    :class:`RowError` skips the whole row. Every skip is located and counted; so is any
    other exception a row's values cause (an unexpected type deep in a row), as
    "unusable row": one row never ends a load (strict mode raises :class:`DataError`)."""
    out: list = []
    for row in rows:
        rep.read()
        if row.error:
            rep.skip(row.error[0], row.where, row.error[1])
            continue
        if not isinstance(row.data, dict):
            rep.skip(NOT_OBJECT, row.where, f"got {type(row.data).__name__}")
            continue
        try:
            for item in convert(row.data, row.where):
                if isinstance(item, RowError):
                    rep.skip(item.reason, row.where, item.detail)
                else:
                    out.append(item)
        except RowError as e:
            rep.skip(e.reason, row.where, e.detail)
        except (DataError, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - a value no converter foresaw: counted, located
            rep.skip(UNUSABLE, row.where, f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}".rstrip(": "))
    return out


def row_id(row: Any, id_field: str | None, where: str) -> str:
    """The row's own id when it has one, else its location (line or #index)."""
    v = get_field(row, id_field) if id_field else None
    if not is_missing(v) and str(v).strip():
        return str(v)
    return where.rsplit(":", 1)[-1]


def pair_from_transcripts(chosen: Any, rejected: Any) -> tuple[Prompt, str, str]:
    """A pair given as two whole conversations that share everything but the final
    assistant turn (HH-RLHF transcripts, or message lists)."""
    conv = []
    for name, v in (("chosen", chosen), ("rejected", rejected)):
        msgs = parse_hh_transcript(v) if isinstance(v, str) else as_messages(v, name)
        split = split_final_reply(msgs) if msgs else None
        if split is None:
            raise RowError(UNPARSEABLE, f"{name}: not a conversation ending in an assistant turn")
        conv.append(split)
    (p_c, c), (p_r, r) = conv
    if prompt_key(p_c) != prompt_key(p_r):
        raise RowError(PREFIX_DIFFERS, "the turns before the final reply are not the same")
    return p_c, as_response(c, "chosen"), as_response(r, "rejected")


OPPOSITE = "same pair with the opposite preference (both kept)"


def make_pair(prompt: Prompt, chosen: str, rejected: str, source: str, id: str, subset: str | None, rep: Reporter, where: str = "") -> PreferencePair:
    """A pair, counted as a duplicate when the same (prompt, chosen, rejected) came before,
    as a conflict when the same prompt and responses came with the opposite preference or
    the same ``id`` with other texts."""
    if chosen == rejected:
        raise RowError(IDENTICAL, "no preference to learn")
    pk = prompt_key(prompt)
    rep.duplicate(("pair", pk, *sorted((chosen, rejected))), content=(chosen, rejected), where=where, id=id, conflict=OPPOSITE)
    return PreferencePair(prompt, chosen, rejected, source=source, id=id, subset=subset)


RESCORED = "same prompt and response with different scores (both kept)"


def rated_seen(rep: Reporter, prompt: Prompt | str, response: str, scores: Mapping[str, Any], where: str, id: str | None = None) -> None:
    """Count a rated record seen before: a duplicate with the same scores, a conflict with
    different ones (or the same ``id`` with other texts)."""
    rep.duplicate(("rated", prompt_key(prompt), response), content=sorted(scores.items()), where=where, id=id, conflict=RESCORED)


def _source_name(path: Path, source: str | None) -> str:
    if source:
        return source
    name = path.name
    for suf in (".gz", ".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet"):
        name = name.removesuffix(suf)
    return name


def load_pairs_file(
    path: str | Path,
    prompt: str | None = "prompt",
    chosen: str = "chosen",
    rejected: str = "rejected",
    subset: str | None = "subset",
    id: str | None = "id",
    source: str | None = None,
    strict: bool = False,
) -> Loaded[PreferencePair]:
    """Preference pairs from a file; defaults read RewardBench's format. ``prompt=None``:
    chosen/rejected are whole conversations (HH transcripts or message lists) whose final
    assistant turns are the responses and whose shared earlier turns are the prompt."""
    path = Path(path)
    src = _source_name(path, source)
    rep = Reporter(src, strict)
    return Loaded(collect(read_rows(path), rep, _pairs_conv(src, rep, prompt, chosen, rejected, subset, id)), rep.report)


def rated_converter(
    src: str,
    rep: Reporter,
    prompt: str,
    response: str,
    attributes: Mapping[str, str],
    scales: Mapping[str, tuple[float, float]],
    id: str | None,
    subset: str | None,
) -> Convert:
    def convert(row: dict, where: str):
        p = as_prompt(need(row, prompt))
        resp = as_response(need(row, response), "response")
        scores: dict[str, Any] = {}
        for attr, fld in attributes.items():
            v = get_field(row, fld)
            if is_missing(v):
                continue  # an attribute may be unrated on some rows; all missing is a skip
            scores[attr] = normalise_all(as_scores(v, fld), scales[attr], fld)
        if not scores:
            raise RowError(MISSING, f"no score in {sorted(attributes.values())}")
        sub = get_field(row, subset) if subset else None
        rid = f"{src}:{row_id(row, id, where)}"
        rated_seen(rep, p, resp, scores, where, rid)
        yield RatedResponse(
            p, resp, scores, source=src, id=rid,
            scales={a: scales[a] for a in scores}, subset=str(sub) if not is_missing(sub) else None,
        )  # fmt: skip

    return convert


def _scales(attributes: Mapping[str, str], scale: tuple[float, float] | Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    if isinstance(scale, Mapping):
        missing = [a for a in attributes if a not in scale]
        if missing:
            raise ValueError(f"no scale given for attributes {missing}")
        return {a: (float(scale[a][0]), float(scale[a][1])) for a in attributes}
    lo, hi = scale
    if not hi > lo:
        raise ValueError(f"scale {scale}: high must exceed low")
    return {a: (float(lo), float(hi)) for a in attributes}


def load_rated_file(
    path: str | Path,
    prompt: str = "prompt",
    response: str = "response",
    attributes: Mapping[str, str] | None = None,
    scale: tuple[float, float] | Mapping[str, tuple[float, float]] = (0.0, 1.0),
    id: str | None = "id",
    subset: str | None = "subset",
    source: str | None = None,
    strict: bool = False,
) -> Loaded[RatedResponse]:
    """Rated responses from a file. ``attributes`` maps attribute name -> field (a field may
    hold one score or the list of individual raters' scores); ``scale`` is the original
    (low, high), one for all attributes or one per attribute. Scores outside it are skipped
    rows, never clipped."""
    path = Path(path)
    attributes = dict(attributes or {"score": "score"})
    src = _source_name(path, source)
    rep = Reporter(src, strict)
    conv = rated_converter(src, rep, prompt, response, attributes, _scales(attributes, scale), id, subset)
    return Loaded(collect(read_rows(path), rep, conv), rep.report)


def load_prompts_file(path: str | Path, prompt: str = "prompt", source: str | None = None, strict: bool = False) -> Loaded:
    """Prompts only (RL): ``Loaded.records`` is a list of text / message-list prompts."""
    path = Path(path)
    src = _source_name(path, source)
    rep = Reporter(src, strict)

    def convert(row: dict, where: str):
        p = as_prompt(need(row, prompt))
        rep.duplicate(("prompt", prompt_key(p)), "duplicate prompts (kept)", where=where)
        yield p

    return Loaded(collect(read_rows(path), rep, convert), rep.report)


# ------------------------------------------------------------------ Hugging Face Hub
class HubUnavailable(DataError):
    """The Hub (or the named dataset) could not be reached / loaded."""


def _pku_pairs(src: str, rep: Reporter) -> Convert:
    def convert(row: dict, where: str):
        safer = int(as_number(need(row, "safer_response_id"), "safer_response_id"))
        if safer not in (0, 1):
            raise RowError("unknown label", f"safer_response_id={safer}")
        p = as_prompt(need(row, "prompt"))
        c = as_response(need(row, f"response_{safer}"), "chosen")
        r = as_response(need(row, f"response_{1 - safer}"), "rejected")
        yield make_pair(p, c, r, src, f"{src}:{where.rsplit('#', 1)[-1]}", "pku-saferlhf", rep, where)

    return convert


def _pku_rated(src: str, rep: Reporter) -> Convert:
    def convert(row: dict, where: str):
        p = as_prompt(need(row, "prompt"))
        for k in (0, 1):
            try:
                resp = as_response(need(row, f"response_{k}"), f"response_{k}")
                safe = float(bool(need(row, f"is_response_{k}_safe")))
            except RowError as e:
                yield e
                continue
            yield RatedResponse(p, resp, {"pku-is_safe": safe}, src, f"{src}:{where.rsplit('#', 1)[-1]}:{k}", {"pku-is_safe": (0.0, 1.0)}, "pku-saferlhf")

    return convert


def _ultrafeedback_rated(src: str, rep: Reporter) -> Convert:
    """openbmb/UltraFeedback: one record per completion, overall score 1-10 plus the four
    GPT-4 aspect ratings (1-5; "N/A" ratings left out)."""
    aspects = ("helpfulness", "honesty", "instruction_following", "truthfulness")

    def convert(row: dict, where: str):
        p = as_prompt(need(row, "instruction"))
        for k, comp in enumerate(need(row, "completions")):
            try:
                resp = as_response(need(comp, "response"), "response")
                scores: dict[str, Any] = {"ultrafeedback-overall_score": normalise(as_number(need(comp, "overall_score"), "overall_score"), (1, 10), "overall_score")}
                for a in aspects:
                    v = get_field(comp, f"annotations.{a}.Rating")
                    if not is_missing(v) and str(v).strip().upper() != "N/A":
                        scores[f"ultrafeedback-{a}"] = normalise(as_number(v, a), (1, 5), a)
            except RowError as e:
                yield e
                continue
            scales = {a: ((1.0, 10.0) if a.endswith("overall_score") else (1.0, 5.0)) for a in scores}
            yield RatedResponse(p, resp, scores, src, f"{src}:{where.rsplit('#', 1)[-1]}:{k}", scales, get_field(row, "source") if isinstance(get_field(row, "source"), str) else None)

    return convert


HS2_ATTRS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")

# name -> (default split, {kind: converter factory}, what to use offline)
_HUB: dict[str, tuple[str, dict[str, Callable[[str, Reporter], Convert]], str]] = {
    "allenai/reward-bench": (
        "filtered",
        {"pairs": lambda s, rep: _pairs_conv(s, rep, "prompt", "chosen", "rejected", "subset", "id")},
        "a RewardBench-format file (prompt, chosen, rejected, subset, id): --data path/to/file.jsonl",
    ),
    "Anthropic/hh-rlhf": (
        "test",
        {"pairs": lambda s, rep: _pairs_conv(s, rep, None, "chosen", "rejected", None, None)},
        "the shared HH-RLHF harmless test set: registry name 'hh-rlhf' (with --data-dir), or --data path/to/file.jsonl",
    ),
    "HuggingFaceH4/ultrafeedback_binarized": (
        "test_prefs",
        {
            "pairs": lambda s, rep: _pairs_conv(s, rep, "prompt", "chosen", "rejected", None, "prompt_id"),
            "rated": lambda s, rep: _uf_binarized_rated(s, rep),
        },
        "the shared UltraFeedback sample: registry name 'ultrafeedback', or --data path/to/file.jsonl",
    ),
    "openbmb/UltraFeedback": ("train", {"rated": _ultrafeedback_rated}, "the shared UltraFeedback sample: registry name 'ultrafeedback'"),
    "PKU-Alignment/PKU-SafeRLHF": (
        "test",
        {"pairs": _pku_pairs, "rated": _pku_rated},
        "the shared PKU-SafeRLHF pairs: registry name 'pku-saferlhf'",
    ),
    "nvidia/HelpSteer2": (
        "validation",
        {"rated": lambda s, rep: rated_converter(s, rep, "prompt", "response", {f"helpsteer-{a}": a for a in HS2_ATTRS}, {f"helpsteer-{a}": (0.0, 4.0) for a in HS2_ATTRS}, None, None)},
        "the HelpSteer2 NeMo fixture: registry name 'helpsteer2-fixture', or a local file via load_rated_file",
    ),
}


def _pairs_conv(src: str, rep: Reporter, prompt: str | None, chosen: str, rejected: str, subset: str | None, id: str | None) -> Convert:
    def convert(row: dict, where: str):
        if prompt is None:
            p, c, r = pair_from_transcripts(need(row, chosen), need(row, rejected))
        else:
            p = as_prompt(need(row, prompt))
            c, r = as_response(need(row, chosen), "chosen"), as_response(need(row, rejected), "rejected")
        sub = get_field(row, subset) if subset else None
        sub = str(sub) if not is_missing(sub) and str(sub).strip() else None
        yield make_pair(p, c, r, src, f"{src}:{row_id(row, id, where)}", sub, rep, where)

    return convert


def _uf_binarized_rated(src: str, rep: Reporter) -> Convert:
    def convert(row: dict, where: str):
        p = as_prompt(need(row, "prompt"))
        for side in ("chosen", "rejected"):
            try:
                resp = as_response(need(row, side), side)
                s = normalise(as_number(need(row, f"score_{side}"), f"score_{side}"), (1, 10), f"score_{side}")
            except RowError as e:
                yield e
                continue
            yield RatedResponse(p, resp, {"ultrafeedback-overall_score": s}, src, f"{src}:{row_id(row, 'prompt_id', where)}:{side}", {"ultrafeedback-overall_score": (1.0, 10.0)})

    return convert


def hub_names() -> list[str]:
    return sorted(_HUB)


def load_hub(name: str, kind: str = "pairs", split: str | None = None, strict: bool = False, **load_kwargs: Any) -> Loaded:
    """A known Hugging Face dataset through ``datasets.load_dataset`` (``kind``: "pairs" or
    "rated"). Raises :class:`HubUnavailable` with the local alternative when offline."""
    if name not in _HUB:
        raise DataError(f"{name!r}: not a known Hub dataset (known: {', '.join(hub_names())}); for others use load_pairs_file/load_rated_file on a local copy")
    default_split, kinds, offline_alt = _HUB[name]
    if kind not in kinds:
        raise DataError(f"{name!r} gives {' and '.join(kinds)}, not {kind}")
    split = split or default_split
    try:
        from datasets import load_dataset

        ds = load_dataset(name, split=split, **load_kwargs)
    except Exception as e:  # network, offline mode, missing repo: all end the same way
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        raise HubUnavailable(
            f"could not reach the Hugging Face Hub for {name!r} (split {split!r}{', HF_HUB_OFFLINE is set' if offline else ''}: {why}); "
            f"pass a local file instead: {offline_alt}"
        ) from None
    src = name.split("/")[-1]
    rep = Reporter(src, strict)
    rows = (Row(f"hf:{name}[{split}]:#{i}", r) for i, r in enumerate(ds))
    return Loaded(collect(rows, rep, kinds[kind](src, rep)), rep.report)
