"""The `fmnist` command: a thin layer of argument parsing over the package's functions.

Each subcommand is one `cmd_*` function; anything a user can get wrong raises an
`errors.FmnistError`, printed here as one line (exit code 2), never as a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import rich.console
import rich.markup
import rich.table

import fmnist
from fmnist import errors

console = rich.console.Console(highlight=False)
error_console = rich.console.Console(stderr=True, highlight=False)
EXAMPLES = """examples:
  fmnist reproduce                        the whole report: data, 50 epochs, evaluation, HTML report
  fmnist data --out runs/data             data summary and the 5x5 sample grid
  fmnist train --epochs 5 --out runs/quick
  fmnist evaluate runs/quick && fmnist report runs/quick
  fmnist predict runs/quick shoe.jpg      classify your own photos
"""


# ---------------------------------------------------------------------------------------------
def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="directory with the four IDX files (default: $FMNIST_DATA_DIR, the Debian "
                             "package, the cache, else download)")


def cmd_data(args) -> int:
    from fmnist import data, figures

    dataset, seconds = data.timed_load(data_dir=args.data_dir)
    console.print(f"source: {dataset.source}  (loaded and verified in {seconds:.2f} s)")
    table = rich.table.Table(title="Fashion-MNIST")
    for column in ("", "images", "dtype", "pixel range", "labels", "dtype"):
        table.add_column(column)
    for part in ("train", "test"):
        images, labels = getattr(dataset, f"{part}_images"), getattr(dataset, f"{part}_labels")
        table.add_row(part, str(images.shape), str(images.dtype), f"{images.min()}..{images.max()}",
                      str(labels.shape), str(labels.dtype))
    console.print(table)
    counts = rich.table.Table(title="images per class")
    for column in ("label", "class", "train", "test"):
        counts.add_column(column, justify="right" if column in ("train", "test") else "left")
    train_counts, test_counts = (data.np.bincount(labels, minlength=data.NUM_CLASSES)
                                 for labels in (dataset.train_labels, dataset.test_labels))
    for label, name in enumerate(data.CLASS_NAMES):
        counts.add_row(str(label), name, f"{train_counts[label]:,}", f"{test_counts[label]:,}")
    console.print(counts)
    path = figures.samples(dataset.train_images, dataset.train_labels, Path(args.out) / "samples.png")
    console.print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fmnist", description="Train, evaluate, understand and use Fashion-MNIST classifiers.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fmnist {fmnist.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser("data", help="check the dataset, print a summary, write the sample grid",
                            description="Find (or download) and verify Fashion-MNIST, print its shapes and "
                                        "per-class counts, and write samples.png (first 25 training images).")
    add_data_options(p)
    p.add_argument("--out", default="runs/data", help="where figures go (default: runs/data)")
    p.set_defaults(handler=cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except errors.FmnistError as exc:
        error_console.print(f"[bold red]error:[/] {rich.markup.escape(str(exc))}", soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
