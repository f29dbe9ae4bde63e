"""The `cxr` command line: parses flags into typed settings and calls the code that does the work."""
import argparse
import os
import sys
from typing import List, Optional

from cxr.components.ingest.mapping import PRESET_NAMES


def main(argv: Optional[List[str]] = None) -> int:
    # TensorFlow's C++ start-up chatter; Beam's worker processes inherit it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except (ValueError, RuntimeError, OSError) as error:
        print(f"cxr {args.command}: error: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_demo_data(commands)
    _add_build_tfrecords(commands)
    _add_run(commands)
    return parser


def _add_demo_data(commands) -> None:
    command = commands.add_parser(
        "demo-data", help="write synthetic phantom X-rays in the three datasets' real layouts")
    command.add_argument("--out", required=True, help="folder to write the three dataset trees into")
    command.add_argument("--per-class", type=int, default=60, help="images per class folder (default 60)")
    command.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    command.add_argument("--seed", type=int, default=0)
    command.set_defaults(run=_run_demo_data)


def _run_demo_data(args) -> None:
    from cxr.demo_data import DemoDataSpec, write_demo_data
    layout = write_demo_data(DemoDataSpec(out_dir=args.out, per_class=args.per_class,
                                          size=args.size, seed=args.seed))
    for source, root in layout.items():
        print(f"{source}: {root}")


def _add_build_tfrecords(commands) -> None:
    command = commands.add_parser(
        "build-tfrecords", help="turn the dataset downloads into a TFRecord span for ExampleGen")
    command.add_argument("--covid-radiography", metavar="DIR", help="COVID-19 Radiography Database folder")
    command.add_argument("--curated", metavar="DIR", help="Mendeley curated COVID-19 PA dataset folder")
    command.add_argument("--nih", metavar="DIR", help="NIH ChestX-ray14 folder (with Data_Entry_2017.csv)")
    command.add_argument("--out", required=True, help="spans are written to OUT/span-N/")
    command.add_argument("--span", type=int, default=1)
    command.add_argument("--mapping", default="multi-source",
                         help=f"{' | '.join(PRESET_NAMES)} | a YAML file (default multi-source)")
    command.add_argument("--nih-multilabel", action="store_true",
                         help="admit NIH images with several findings when they map to one label "
                              "(e.g. Effusion|Pneumothorax)")
    command.add_argument("--near-duplicate-distance", type=int, default=4,
                         help="Hamming distance at or under which two images are near duplicates; "
                              "-1 keeps exact duplicates only (default 4)")
    command.add_argument("--max-pixels", type=int, default=50_000_000,
                         help="quarantine images whose header declares more pixels")
    command.add_argument("--overwrite", action="store_true", help="replace an existing span")
    command.add_argument("--beam-arg", action="append", default=[], metavar="FLAG",
                         help="a Beam pipeline flag, e.g. --beam-arg=--direct_num_workers=1 or "
                              "--beam-arg=--runner=FlinkRunner; repeat for several")
    command.set_defaults(run=_run_build_tfrecords)


def _run_build_tfrecords(args) -> int:
    from cxr.components.ingest.build import build_tfrecords
    from cxr.components.ingest.config import IngestConfig
    from cxr.components.ingest.ledger import format_reconciliation
    from cxr.components.ingest.mapping import ClassMapping

    roots = {"covid_radiography": args.covid_radiography, "curated": args.curated, "nih": args.nih}
    mapping = ClassMapping.from_name_or_file(args.mapping)
    config = IngestConfig(
        source_roots={source: root for source, root in roots.items() if root},
        out_dir=args.out, span=args.span,
        mapping=mapping.with_nih_multilabel(args.nih_multilabel or mapping.nih_multilabel),
        near_duplicate_max_distance=args.near_duplicate_distance, max_pixels=args.max_pixels,
        overwrite=args.overwrite, beam_args=tuple(args.beam_arg))
    manifest = build_tfrecords(config)
    print(f"\nspan {config.span} written to {config.span_dir}")
    print(format_reconciliation(manifest["reconciliation"]))
    print(_class_by_source_table(manifest["written"]))
    return 0


def _class_by_source_table(written: dict) -> str:
    sources = sorted({source for by_source in written.values() for source in by_source})
    lines = ["\nwritten, by label and source:", "  ".join([f"{'label':<20}"] + [f"{s:>17}" for s in sources])]
    for label in sorted(written):
        lines.append("  ".join([f"{label:<20}"] + [f"{written[label].get(s, 0):>17,}" for s in sources]))
    return "\n".join(lines)


def _add_run(commands) -> None:
    command = commands.add_parser("run", help="run the TFX pipeline on this machine (LocalDagRunner)")
    command.add_argument("--preset", default="demo", help="demo | study (default demo)")
    command.add_argument("--config", metavar="FILE", help="YAML file overriding the preset's settings")
    command.add_argument("--span", type=int, help="the TFRecord span to train on (default: the latest)")
    command.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                         help="override one setting, e.g. --set training.epochs=5; repeat for several")
    command.set_defaults(run=_run_pipeline)


def _run_pipeline(args) -> int:
    from cxr.pipeline.config import load_config
    from cxr.pipeline.local_runner import run_local
    from cxr.pipeline.summary import EXIT_FAILED, EXIT_NOT_BLESSED, format_summary

    overrides = list(args.set) + ([f"data.span={args.span}"] if args.span is not None else [])
    config = load_config(args.preset, args.config, overrides)
    summary = run_local(config)
    print(format_summary(summary))
    if summary.error:
        return EXIT_FAILED
    return 0 if summary.blessed else EXIT_NOT_BLESSED
