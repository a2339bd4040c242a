"""The `fmnist` command line as tables: every command (COMMANDS: its summary, description and examples) and its
flags with their defaults (main.py runs them).

The training flags are generated from the settings' own fields (api.Recipe, api.Runtime: each field's help,
unit and choices are written there once): `--batch-size` for batch_size, `--flip/--no-flip` for a boolean.
Recipe flags default to None: the model's recipe decides (`fmnist models`); a flag given overrides it.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from fmnist import api  # imports no torch: `fmnist --help` stays instant
from fmnist.core import version
from fmnist.serving import limits

EXAMPLES = """examples:
  fmnist reproduce                        the whole report: data, 50 epochs, evaluation, HTML report
  fmnist data --out runs/data             data summary and the 5x5 sample grid
  fmnist train --epochs 5 --out runs/quick
  fmnist evaluate runs/quick && fmnist report runs/quick
  fmnist predict runs/quick shoe.jpg      classify your own photos
  fmnist predict --pretrained shoe.jpg    ... with the model that ships with fmnist: no training
"""
SETTINGS = {
    field.name: field for cls in (api.Recipe, api.Runtime, api.TrainConfig) for field in dataclasses.fields(cls)
}
RECIPE, RUNTIME = (tuple(f.name for f in dataclasses.fields(cls)) for cls in (api.Recipe, api.Runtime))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def value_type(name: str) -> type:
    """The field's type, without None (int for `int | None`)."""
    kind = typing.get_type_hints(api.TrainConfig)[name]
    return next(t for t in (typing.get_args(kind) or (kind,)) if t is not type(None))


def default_text(field: dataclasses.Field) -> str:
    """A recipe setting's default is the model's; a runtime setting's is its field's (or what None means)."""
    if field.name in RECIPE:
        return "the model's recipe"
    return field.metadata["none"] if field.default is None else str(field.default)


def add_setting(parser, name: str, default=None, **options) -> None:
    """The flag of one setting, its help, unit and choices read from its field."""
    field, kind = SETTINGS[name], value_type(name)
    meta = field.metadata
    text = f"{meta['help']} (default: {default_text(field)})"
    if kind is bool:
        parser.add_argument(flag(name), action=argparse.BooleanOptionalAction, default=default, help=text)
    else:
        metavar = meta["unit"].upper() if meta["unit"] and not meta["choices"] else None
        parser.add_argument(
            flag(name), type=kind, choices=meta["choices"], default=default, metavar=metavar, help=text, **options
        )


def add_data_options(parser: argparse.ArgumentParser) -> None:
    add_setting(parser, "data_dir")


def add_train_options(parser: argparse.ArgumentParser, several_models: bool = False) -> None:
    """Every training setting as a flag, recipe and runtime apart, and the seed."""
    parser.add_argument(
        "--model",
        default=None,
        action="append" if several_models else "store",
        help=f"{SETTINGS['model'].metadata['help']} (default: {api.DEFAULT_MODEL}, the report's)"
        + ("; repeat it to compare models" if several_models else ""),
    )
    add_setting(parser, "seed", default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar (default: off)")
    recipe = parser.add_argument_group("recipe (each default: the model's recipe, see `fmnist models`)")
    for name in RECIPE[1:]:  # the model is the flag above
        add_setting(recipe, name)
    runtime = parser.add_argument_group("runtime (where and how this run computes)")
    for name in RUNTIME:
        add_setting(runtime, name)


def settings_of(args: argparse.Namespace) -> dict:
    """The training flags as TrainConfig fields (None: not given, the model's recipe or the field decides)."""
    return {name: getattr(args, name) for name in RECIPE + RUNTIME if name != "model"}


def top_count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= len(api.CLASS_NAMES):
        raise argparse.ArgumentTypeError(f"must be from 1 to {len(api.CLASS_NAMES)}, got {value}")
    return value


COMMANDS = {  # name: (one line for `fmnist --help`, the command's description, its examples)
    "data": (
        "check the dataset, print a summary, write the sample grid",
        "Find (or download) and verify Fashion-MNIST, print its shapes and per-class counts, and write "
        "samples.png (the first 25 training images).",
        ["fmnist data --out runs/data"],
    ),
    "train": (
        "train the report's CNN (50 epochs, Adam, batch 128)",
        "Train the report's CNN with its settings (or another model's, --model); writes a run directory.",
        [
            "fmnist train --out runs/seed0",
            "fmnist train --epochs 2 --limit 5000 --out runs/quick",
            "fmnist train --resume runs/seed0",
            "torchrun --nproc-per-node 2 -m fmnist train --threads 1 --out runs/ddp",
        ],
    ),
    "models": (
        "list the networks fmnist trains, with their recipes",
        "The model registry: each network's name, parameters, forward MFLOPs per image and the training "
        "recipe `fmnist train --model NAME` uses (flags override any part of it).",
        ["fmnist models"],
    ),
    "evaluate": (
        "loss/accuracy on train and test, per-class table, figures",
        "Evaluate a run on its training split and the test set; writes metrics.json, predictions.csv and figures/.",
        ["fmnist evaluate runs/train --weights best", "fmnist evaluate runs/res95 --precision bf16"],
    ),
    "report": (
        "write report.html and report.md for an evaluated run",
        "One self-contained HTML page (and its Markdown twin) for an evaluated run.",
        ["fmnist report runs/train"],
    ),
    "reproduce": (
        "the whole report in one command",
        "Reproduce the report: data check and sample grid, training with its settings, evaluation and "
        "report, for one or more seeds. Re-running continues where it stopped.",
        [
            "fmnist reproduce",
            "fmnist reproduce --seeds 3",
            "fmnist reproduce --model fast-cnn --seeds 3",
            "fmnist reproduce --model seed-cnn --model fast-cnn --seeds 3   (one comparison table)",
            "fmnist reproduce --model cnn94 --seeds 5 --target 0.945",
            "fmnist reproduce --model cnn94 --seeds 3 --ensemble",
            "fmnist reproduce --epochs 1 --limit 3000 --out /tmp/quick",
        ],
    ),
    "bench": (
        "time training and evaluation against plain eager PyTorch",
        "Time fmnist's training step and a plain eager PyTorch version of the same network on the same "
        "batch, one epoch, and evaluation throughput.",
        ["fmnist bench", "fmnist bench --model fast-cnn", "fmnist bench --threads 2 --json"],
    ),
    "sweep": (
        "many runs at once on Ray: recipe sweeps and seed studies",
        "Train every configuration of a search space over a model's recipe, for several seeds, in parallel "
        "on Ray (local, or a cluster with --address). Each trial is a run directory; running the same "
        "command again resumes an interrupted sweep. The summary chooses on validation accuracy and tests "
        "only the chosen configuration. Needs Ray: pip install 'fmnist[ray]'.",
        [
            "fmnist sweep --model fast-cnn --vary learning_rate=0.05,0.1 --vary shift=1,2 --seeds 2",
            "fmnist sweep --file sweep.toml --threads 1 --workers 2 --out runs/sweep",
            "fmnist sweep --file sweep.toml --address 10.0.0.1:6379   (a Ray cluster)",
        ],
    ),
    "predict": (
        "classify your own images (PNG, JPEG, WebP, BMP, GIF, ...)",
        "Classify images, preprocessed as Fashion-MNIST was made from product photos. Prints the top "
        "classes per file; exit code 1 if any file failed.",
        [
            "fmnist predict runs/train shoe.jpg bag.png",
            "fmnist predict --pretrained shoe.jpg",
            "fmnist predict runs/train photos/ --json --save-preprocessed seen/",
        ],
    ),
    "ensemble": (
        "average trained runs as one model",
        "Make an ensemble: the members' networks (each with its own test-time augmentation) averaged as one model, "
        "in a run directory that evaluate, report, predict, serve and export take as any run.",
        [
            "fmnist ensemble runs/reproduce/seed-0 runs/reproduce/seed-1 runs/reproduce/seed-2 --out runs/ens",
            "fmnist evaluate runs/ens && fmnist export runs/ens --format onnx",
        ],
    ),
    "export": (
        "export a run to ONNX (checked with onnxruntime) or Keras",
        "Export to ONNX: input (N, 28, 28, 1) float32 in [0, 1], probabilities out, class names in the "
        "metadata; verified against PyTorch on 1,000 test images. Or, for the report's network "
        "(seed-cnn), to a Keras 3 .keras file that keras.saving.load_model reads.",
        ["fmnist export runs/train --format onnx", "fmnist export runs/train --format keras"],
    ),
    "import-keras": (
        "turn a Keras .keras/.h5 model into a run",
        "Import a Keras model with the report's architecture (Keras 3 .keras or legacy .h5). Reads "
        "JSON and arrays only: no code from the file runs.",
        ["fmnist import-keras my_model.keras --out runs/keras", "fmnist evaluate runs/keras"],
    ),
    "serve": (
        "serve a run over HTTP, with a page to try images",
        "HTTP server: POST /predict (raw image body or multipart, several files allowed), GET /health, "
        "GET / (a page to drop images on).",
        [
            "fmnist serve runs/train --port 8000",
            "fmnist serve --pretrained",
            "curl -F file=@shoe.jpg http://127.0.0.1:8000/predict",
            "fmnist serve runs/res95 --precision bf16",
            "fmnist serve runs/train --replicas 2",
            "fmnist serve runs/train --replicas 8 --address HEAD:6379",
        ],
    ),
}
PRECISION = (
    "compute in fp32, or in bf16: 1.4-1.9x the images/s in batches where the CPU computes bf16 natively "
    "(AVX512-BF16, AMX) or on a GPU, no faster one image at a time, slower on other CPUs; about 1 "
    "prediction in 1,000 changes (default: fp32)"
)
PRETRAINED = "the model that ships with fmnist instead of a run: no run directory to give (default: off)"
COMBINE = "average the members' logits or probabilities; auto: whichever has the lower validation loss (default: auto)"
WEIGHTS = "final weights or those of the lowest validation loss (default: final)"
REQUEST_TIMEOUT = (
    "a request's deadline: to arrive whole (slow clients are dropped); with --replicas, end to end at "
    "Ray Serve's proxy, which answers 408 past it (default: %(default)s)"
)
ALLOWED_HOST = (
    "a host name clients may use (repeatable; default: 127.0.0.1 and localhost on a loopback address, "
    "any name otherwise)"
)


def add_data(p) -> None:
    add_data_options(p)
    p.add_argument("--out", default=api.OUT["data"], help="where figures go (default: %(default)s)")


def add_train(p) -> None:
    add_train_options(p)
    p.add_argument("--out", default=api.OUT["train"], help="run directory to write (default: %(default)s)")
    p.add_argument(
        "--resume", metavar="RUN", help="continue an interrupted run with its own settings (--epochs may extend it)"
    )


def add_evaluate(p) -> None:
    p.add_argument("run", help="run directory")
    p.add_argument("--weights", choices=("final", "best"), default="final", help=WEIGHTS)
    p.add_argument("--precision", choices=api.INFERENCE_PRECISIONS, default="fp32", help=PRECISION)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    add_data_options(p)


def add_report(p) -> None:
    p.add_argument("run", help="run directory (evaluated)")


def add_reproduce(p) -> None:
    add_train_options(p, several_models=True)
    p.add_argument("--seeds", type=int, help="seeds, from --seed on (default: 1 for one model, 5 to compare)")
    p.add_argument("--ensemble", action="store_true", help="also the seeds averaged as one model (default: off)")
    p.add_argument(
        "--target",
        type=float,
        action="append",
        help="also state the time to this validation accuracy (always: 0.91, 0.93, 0.94); repeatable",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="train the seeds in parallel, K at a time, on Ray (pip install "
        "'fmnist[ray]'), --threads each (default: one after another)",
    )
    p.add_argument("--address", help="a Ray cluster's address for the parallel seeds (default: local)")
    p.add_argument("--out", default=api.OUT["reproduce"], help="output directory (default: %(default)s)")


def add_bench(p) -> None:
    p.add_argument(
        "--model", default=api.DEFAULT_MODEL, help="the network to time (default: %(default)s; see `fmnist models`)"
    )
    p.add_argument("--quick", action="store_true", help="a few steps only, to check that it runs (default: off)")
    add_setting(p, "threads")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the model's recipe)")
    p.add_argument("--out", default=api.OUT["bench"], help="the record goes here, as MODEL.json (default: %(default)s)")
    p.add_argument(
        "--precision",
        choices=SETTINGS["precision"].metadata["choices"],
        default="auto",
        help="fmnist's step precision (default: auto, as training chooses it)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON (default: a table)")


def add_sweep(p) -> None:
    p.add_argument("--file", type=Path, help="a TOML sweep file: model, seeds, search, samples, [space], [fixed]")
    p.add_argument("--model", help="the network (default: the file's, else seed-cnn)")
    p.add_argument("--vary", action="append", metavar="NAME=V1,V2", help="a setting and its values (repeatable)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="a setting held fixed (repeatable)")
    p.add_argument("--seeds", type=int, help="seeds per configuration (default: the file's, else 1)")
    p.add_argument(
        "--search", choices=("grid", "random"), help="every combination, or --samples random ones (default: grid)"
    )
    p.add_argument("--samples", type=int, help="random search: configurations (default: 8)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per trial (default: 1)")
    p.add_argument("--workers", type=int, help="trials at once (default: the CPUs this process may use / --threads)")
    p.add_argument("--address", help="a Ray cluster's address (default: a local Ray instance)")
    p.add_argument("--quiet", action="store_true", help="no Tune progress table (default: off)")
    p.add_argument("--out", default=api.OUT["sweep"], help="output directory (default: %(default)s)")


def add_ensemble(p) -> None:
    p.add_argument("members", nargs="+", metavar="RUN", help="the runs to average (2 or more, any models)")
    p.add_argument("--combine", choices=("auto", "logits", "probabilities"), default="auto", help=COMBINE)
    p.add_argument("--out", default=api.OUT["ensemble"], help="run directory to write (default: %(default)s)")


def add_predict(p) -> None:
    p.add_argument("paths", nargs="+", type=Path, metavar="[RUN] IMAGE", help="a run directory, then images or folders")
    p.add_argument("--pretrained", action="store_true", help=PRETRAINED)
    p.add_argument("--top", type=top_count, default=3, help="classes to show per image, 1 to 10 (default: 3)")
    p.add_argument("--json", action="store_true", help="print JSON (default: one line per file)")
    p.add_argument("--save-preprocessed", metavar="DIR", help="save the 28x28 the model saw (default: don't)")
    p.add_argument("--weights", choices=("final", "best"), default="final", help=WEIGHTS)
    p.add_argument("--precision", choices=api.INFERENCE_PRECISIONS, default="fp32", help=PRECISION)


def add_export(p) -> None:
    p.add_argument("run", help="run directory")
    p.add_argument("--format", choices=("onnx", "keras"), default="onnx", help="export format (default: onnx)")
    p.add_argument("--out", help="output file (default: RUN/model.onnx or RUN/model.keras)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check (default: check)")
    p.add_argument("--weights", choices=("final", "best"), default="final", help=WEIGHTS)
    add_data_options(p)


def add_import_keras(p) -> None:
    p.add_argument("model", help="the .keras or .h5 file")
    p.add_argument("--out", default=api.OUT["keras"], help="run directory to write (default: %(default)s)")


def add_serve(p) -> None:
    p.add_argument("run", nargs="?", help="run directory (or --pretrained)")
    p.add_argument("--pretrained", action="store_true", help=PRETRAINED)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=8000, help="port (default: 8000; 0: any free one)")
    p.add_argument("--max-bytes", type=int, help=f"request size limit in bytes (default: {limits.MAX_BYTES:,})")
    p.add_argument(
        "--request-timeout",
        type=positive_seconds,
        default=limits.REQUEST_TIMEOUT_S,
        metavar="SECONDS",
        help=REQUEST_TIMEOUT,
    )
    p.add_argument("--allowed-host", action="append", metavar="NAME", help=ALLOWED_HOST)
    p.add_argument(
        "--replicas",
        type=int,
        metavar="N",
        help="serve with N replicas on Ray Serve (pip install 'fmnist[ray]'; default: one process)",
    )
    p.add_argument("--address", help="a Ray cluster's address for the replicas (default: a local Ray instance)")
    p.add_argument("--precision", choices=api.INFERENCE_PRECISIONS, default="fp32", help=PRECISION)


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"seconds from 0 to a day, not {text!r}")
    return value


def port_number(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, not {text!r}")
    return int(text)


def build_parser(handlers: dict) -> argparse.ArgumentParser:
    """The whole command line: per command in COMMANDS its flags (add_NAME here) and its function, from
    `handlers` (main.py's cmd_NAME, "-" written "_")."""
    parser = argparse.ArgumentParser(
        prog="fmnist",
        description="Train, evaluate, understand and use Fashion-MNIST classifiers.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fmnist {version.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (summary, description, examples) in COMMANDS.items():
        p = commands.add_parser(
            name,
            help=summary,
            description=description,
            epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(handler=handlers[name.replace("-", "_")])
        globals().get(f"add_{name.replace('-', '_')}", lambda p: None)(p)  # the command's flags: add_NAME
    return parser
