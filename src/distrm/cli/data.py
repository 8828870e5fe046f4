"""``distrm data inspect NAME|PATH|all``: what a dataset yields, what was skipped and why.

Prints counts (pairs, rated rows, prompts, raters per item), attributes with their original
scales, the record fields, skip reasons with ``file:line`` examples, notes (duplicates kept,
"Unsure" ratings, ...) and a text histogram of response lengths in whitespace tokens.
``--json OUT`` writes the same numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from distrm.config import DataConfig
from distrm.data.records import distinct_items_per_attribute, prompt_key

BINS = (0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect datasets (counts, attributes, skipped rows)", description=__doc__.split("\n\n")[0])
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    i = dsub.add_parser("inspect", help="counts, fields, skip reasons and length histogram of a dataset")
    i.add_argument("name", help="registry name (see 'distrm data list'), 'all', a data file, or a Hub id owner/name")
    i.add_argument("--data-dir", default=None, help="shared data folder (default: $DISTRM_DATA_DIR or ../shared/data)")
    i.add_argument("--strict", action="store_true", help="any skipped row is an error")
    i.add_argument("--json", default=None, metavar="OUT", help="also write the statistics as JSON to OUT")
    i.add_argument("--kind", choices=["pairs", "rated", "prompts"], default=None, help="for a file: read it as this kind")
    i.add_argument("--attribute", action="append", default=[], metavar="NAME=FIELD", help="for a rated file: attribute and its field")
    i.add_argument("--scale", default="0,1", metavar="LOW,HIGH", help="for a rated file: original score scale (default 0,1)")
    i.set_defaults(func=run_inspect)
    ls = dsub.add_parser("list", help="the registered dataset names")
    ls.set_defaults(func=run_list)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_list(args: argparse.Namespace) -> int:
    from distrm.data import registry

    for name in registry.names(include_subsets=True):
        d = registry.DATASETS[name]
        extra = (" [eval only]" if d.eval_only else "") + (f" (aliases: {', '.join(d.aliases)})" if d.aliases else "")
        print(f"{name:22} {'/'.join(d.kinds):22} {d.description}{extra}")
    return 0


# ------------------------------------------------------------------ statistics
def _hist(lengths: list[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for lo, hi in zip(BINS, BINS[1:] + (None,)):
        label = f"{lo}-{hi - 1}" if hi else f">={lo}"
        out[label] = sum(1 for n in lengths if n >= lo and (hi is None or n < hi))
    return out


def _words(s: str) -> int:
    return len(s.split())


def _prompt_stats(prompts: list) -> dict[str, Any]:
    chat = sum(isinstance(p, list) for p in prompts)
    return {"distinct_prompts": len({prompt_key(p) for p in prompts}), "chat_prompts": chat, "text_prompts": len(prompts) - chat}


def _summ(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)} if xs else {}


def stats_of(kind: str, loaded: Any) -> dict[str, Any]:
    """JSON-ready statistics of one loaded kind."""
    if kind == "bon":
        win = [w for p in loaded.prompts for w in p.win_prob if w is not None]
        return {
            "prompts": len(loaded.prompts),
            "samples_per_prompt": loaded.n_samples,
            "judged_samples": loaded.judged_samples,
            "verdicts": len(win),
            "mean_win_prob_vs_reference": statistics.fmean(win) if win else None,
            "response_tokens": _hist([_words(c) for p in loaded.prompts for c in p.candidates]),
            "report": loaded.report.to_dict(),
        }
    recs = loaded.records
    st: dict[str, Any] = {"records": len(recs), "report": loaded.report.to_dict()}
    if kind == "prompts":
        st.update(_prompt_stats(recs))
        st["prompt_tokens"] = _hist([_words(p if isinstance(p, str) else prompt_key(p)) for p in recs])
        return st
    st.update(_prompt_stats([r.prompt for r in recs]))
    st["sources"] = dict(Counter(r.source for r in recs))
    st["subsets"] = dict(Counter(str(r.subset) for r in recs).most_common(20))
    if kind == "pairs":
        st["fields"] = ["prompt", "chosen", "rejected", "source", "id", "subset"]
        st["chosen_tokens"] = _hist([_words(r.chosen) for r in recs])
        st["rejected_tokens"] = _hist([_words(r.rejected) for r in recs])
        st["chosen_longer"] = sum(_words(r.chosen) > _words(r.rejected) for r in recs)
    else:
        st["fields"] = ["prompt", "response", "scores", "scales", "source", "id", "subset"]
        attrs: dict[str, Any] = {}
        n_items = distinct_items_per_attribute(recs)
        for a in sorted(n_items):
            with_a = [r for r in recs if a in r.scores]
            raters = [len(r.rater_scores(a)) for r in with_a]
            vals = [v for r in with_a for v in r.rater_scores(a)]
            attrs[a] = {
                "records": len(with_a),
                "distinct_items": n_items[a],
                # `distrm train` leaves such attributes out (a head on a handful of items is noise)
                "below_training_minimum": n_items[a] < DataConfig.min_items_per_attribute,
                "scale": list(next((r.scales[a] for r in with_a if a in r.scales), (0.0, 1.0))),
                "raters_per_item": _summ(raters),
                "ratings": len(vals),
                "mean_score_01": statistics.fmean(vals) if vals else None,
            }
        st["attributes"] = attrs
        st["response_tokens"] = _hist([_words(r.response) for r in recs])
    return st


def _print_hist(title: str, hist: dict[str, int], out) -> None:
    total = max(hist.values()) or 1
    print(f"  {title} (whitespace tokens):", file=out)
    for label, n in hist.items():
        print(f"    {label:>10} {n:7d} {'#' * round(40 * n / total)}", file=out)


def print_stats(name: str, kind: str, st: dict[str, Any], out=None) -> None:
    out = out or sys.stdout
    rep = st["report"]
    head = st.get("records", st.get("prompts"))
    print(f"{name} [{kind}]: {head} {'prompts' if kind == 'bon' else 'records'} from {rep['rows_read']} rows read, {sum(rep['skipped'].values())} skipped", file=out)
    if "distinct_prompts" in st:
        print(f"  prompts: {st['distinct_prompts']} distinct; records with chat prompts {st['chat_prompts']}, with text prompts {st['text_prompts']}", file=out)
    if st.get("fields"):
        print(f"  fields: {', '.join(st['fields'])}", file=out)
    if st.get("subsets"):
        print(f"  subsets: {', '.join(f'{k} {v}' for k, v in st['subsets'].items())}", file=out)
    for a, s in st.get("attributes", {}).items():
        r = s["raters_per_item"]
        print(
            f"  attribute {a}: scale {s['scale'][0]:g}..{s['scale'][1]:g}, {s['records']} records, {s['ratings']} ratings, "
            f"raters/item {r.get('min', 0)}-{r.get('max', 0)} (median {r.get('median', 0):g}), mean {s['mean_score_01']:.3f} on [0,1]",
            file=out,
        )
        if s.get("below_training_minimum"):
            print(f"    ! only {s['distinct_items']} distinct items (< data.min_items_per_attribute="
                  f"{DataConfig.min_items_per_attribute}): `distrm train` leaves this attribute out", file=out)
    if kind == "bon":
        print(f"  {st['samples_per_prompt']} samples per prompt; judge verdicts for samples {st['judged_samples']} ({st['verdicts']} verdicts), mean win prob vs reference {st['mean_win_prob_vs_reference']:.3f}", file=out)
    if kind == "pairs" and st["records"]:
        print(f"  chosen longer than rejected: {st['chosen_longer']} of {st['records']} ({100 * st['chosen_longer'] / st['records']:.1f}%)", file=out)
    for reason, n in sorted(rep["skipped"].items(), key=lambda kv: -kv[1]):
        print(f"  skipped {reason}: {n}", file=out)
        for ex in rep["examples"].get(reason, []):
            print(f"      e.g. {ex}", file=out)
    for what, n in rep.get("counts", {}).items():
        print(f"  note: {what}: {n}", file=out)
    for key in ("chosen_tokens", "rejected_tokens", "response_tokens", "prompt_tokens"):
        if key in st:
            _print_hist(key.replace("_tokens", " length"), st[key], out)


def _file_loader_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if not args.attribute:
        return {}
    attrs = {}
    for spec in args.attribute:
        name, _, fld = spec.partition("=")
        attrs[name] = fld or name
    lo, _, hi = args.scale.partition(",")
    return {"attributes": attrs, "scale": (float(lo), float(hi))}


def inspect_one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from distrm.data import registry

    if args.kind:
        loader = {"pairs": registry.load_pairs, "rated": registry.load_rated, "prompts": registry.load_prompts}[args.kind]
        kw = _file_loader_kwargs(args) if args.kind == "rated" else {}
        loaded = {args.kind: loader(name, data_dir=args.data_dir, strict=args.strict, **kw)}
    else:
        loaded = registry.load_all(name, data_dir=args.data_dir, strict=args.strict)
    return {kind: stats_of(kind, v) for kind, v in loaded.items()}


def run_inspect(args: argparse.Namespace) -> int:
    from distrm.data import registry

    targets = registry.names() if args.name == "all" else [args.name]
    result: dict[str, Any] = {}
    failed = 0
    for name in targets:
        try:
            stats = inspect_one(name, args)
        except (ValueError, FileNotFoundError, KeyError) as e:
            if len(targets) == 1:
                raise
            failed += 1
            result[name] = {"error": str(e)}
            print(f"{name}: error: {e}\n", file=sys.stderr)
            continue
        result[name] = stats
        for kind, st in stats.items():
            print_stats(name, kind, st)
            print()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
        print(f"statistics written to {args.json}")
    return 1 if failed else 0
