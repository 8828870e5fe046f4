"""``distrm convert``: import the released QRM / ArmoRM checkpoints into distrm model folders,
and export a distrm QRM to the released QRM layout (see :mod:`distrm.models.convert` for the
mapping and what is exact).

* ``distrm convert import SRC OUT [--layout auto|qrm|armorm] [--revision REV]``: SRC is a
  local folder or a Hub id (safetensors only); OUT becomes a self-contained model folder
  (backbone bundled in ``OUT/backbone``).
* ``distrm convert export-qrm MODEL OUT``: refuses, naming why, any model the released
  layout cannot express exactly.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="import released QRM/ArmoRM checkpoints; export a distrm QRM to the QRM layout",
                       description=__doc__.split("\n\n")[0])
    csub = p.add_subparsers(dest="convert_command", metavar="ACTION")
    imp = csub.add_parser("import", help="released QRM / ArmoRM checkpoint -> distrm model folder")
    imp.add_argument("src", help="released checkpoint: local folder or Hub id (e.g. nicolinho/QRM-Llama3.1-8B-v2)")
    imp.add_argument("out", help="new (empty) output folder")
    imp.add_argument("--layout", choices=["auto", "qrm", "armorm"], default="auto",
                     help="checkpoint layout (default: detected from the config and the regression layer)")
    imp.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of a Hub id")
    imp.add_argument("--attributes", default=None,
                     help="comma-separated attribute names (default: from the config, else ArmoRM's 19 names)")
    imp.add_argument("--max-length", type=int, default=4096, help="backbone truncation length in tokens (default 4096)")
    imp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                     help="backbone precision recorded in the model (float32: exact on CPU; bfloat16: GPU)")
    imp.set_defaults(func=run_import)
    exp = csub.add_parser("export-qrm", help="distrm QRM folder -> released QRM layout (config.json + model.safetensors)")
    exp.add_argument("model", help="a saved distrm QRM folder")
    exp.add_argument("out", help="new (empty) output folder")
    exp.set_defaults(func=run_export)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_import(args: argparse.Namespace) -> int:
    from distrm.models.convert import import_released

    names = [a.strip() for a in args.attributes.split(",")] if args.attributes else None
    out = import_released(args.src, args.out, layout=args.layout, revision=args.revision, attributes=names,
                          max_length=args.max_length, dtype=args.dtype)
    print(f"wrote {out} (load with distrm.AutoRewardModel.from_pretrained)")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from distrm.models.convert import export_qrm

    out = export_qrm(args.model, args.out)
    print(f"wrote {out} (QRM layout: config.json + model.safetensors)")
    return 0
