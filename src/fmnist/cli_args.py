"""The `fmnist` command line as tables: every command, flag, default and example (cli.py runs them).

Recipe flags default to None: the model's recipe decides (`fmnist models`); a flag given overrides it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from fmnist import version  # the rest loads inside functions: `fmnist --help` stays quick, without torch


EXAMPLES = """examples:
  fmnist reproduce                        the whole report: data, 50 epochs, evaluation, HTML report
  fmnist data --out runs/data             data summary and the 5x5 sample grid
  fmnist train --epochs 5 --out runs/quick
  fmnist evaluate runs/quick && fmnist report runs/quick
  fmnist predict runs/quick shoe.jpg      classify your own photos
"""


def default_model() -> str:
    from fmnist import models

    return models.DEFAULT


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="directory with the four IDX files (default: $FMNIST_DATA_DIR, the Debian "
                             "package, the cache, else download)")


def add_train_options(parser: argparse.ArgumentParser, several_models: bool = False) -> None:
    """Training flags. Recipe settings default to None: the model's recipe decides (`fmnist models`)."""
    from fmnist import configs

    parser.add_argument("--model", default=None, action="append" if several_models else "store",
                        help="the network to train (default: seed-cnn, the report's; see `fmnist models`)"
                             + ("; repeat it to compare models" if several_models else ""))
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the model's recipe)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default: the model's recipe)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="learning rate (default: the model's recipe)")
    parser.add_argument("--validation-fraction", type=float, default=None,
                        help="last fraction of the training images held out, as Keras's validation_split; "
                             "0: a final fit on all 60,000, nothing validated "
                             "(default: the model's recipe; the report's 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: the CPUs this process may use, by affinity and cgroup quota)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    parser.add_argument("--limit", type=int, default=None,
                        help="use only the first N training images, for quick runs (default: all 60,000)")
    parser.add_argument("--dropout", type=float, default=None, help="dropout rate (default: the model's recipe)")
    parser.add_argument("--precision", choices=configs.PRECISIONS, default=None,
                        help="bf16 autocast, fp32, or auto: bf16 for models measured to hold their accuracy in "
                             "it, where the CPU (AMX, AVX512-BF16) or GPU computes it natively (default: auto)")
    parser.add_argument("--validate-tta", choices=configs.VALIDATE_TTA, default="every",
                        help="validate through the model's test-time augmentation every epoch, or only after the "
                             "last (the network alone before it: cnn94's 6 views cost a third of its epoch; the "
                             "weights are the same) (default: every)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (default: off)")
    add_recipe_options(parser)
    add_data_options(parser)


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    from fmnist import recipe

    group = parser.add_argument_group("recipe (each default: the model's recipe, see `fmnist models`)")
    group.add_argument("--optimizer", choices=recipe.OPTIMIZERS, default=None,
                       help=f"adam (Keras's, the report's), sgd (Nesterov momentum {recipe.MOMENTUM:g}), adamw, or "
                            "muon (orthogonalised updates for the conv filters, sgd for the rest)")
    group.add_argument("--weight-decay", type=float, default=None, help="on weights, not biases or BatchNorm")
    group.add_argument("--schedule", choices=recipe.SCHEDULES, default=None,
                       help="constant, or onecycle: linear warm-up to --learning-rate, then linear decay to 0")
    group.add_argument("--warmup", type=float, default=None, help="fraction of all steps spent warming up")
    group.add_argument("--label-smoothing", type=float, default=None, help="e.g. 0.1")
    group.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                       help="mirror a random half of the training images each epoch")
    group.add_argument("--shift", type=int, default=None, help="move each training image up to N pixels")
    group.add_argument("--cutout", type=int, default=None,
                       help="zero an N x N square of each training image at a random place, e.g. 8")
    group.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                       help="evaluate and predict on the mean of each image and its mirror")
    group.add_argument("--tta-shift", type=int, default=None,
                       help="TTA also on both moved diagonally by -N and +N pixels (6 views), e.g. 1")
    group.add_argument("--alternate-flip", action=argparse.BooleanOptionalAction, default=None,
                       help="with --flip: mirror each image on every other epoch instead of at random")
    group.add_argument("--bn-bias-lr", type=float, default=None,
                       help="BatchNorm biases learn at this multiple of the learning rate, e.g. 64")
    group.add_argument("--muon-lr", type=float, default=None,
                       help="--optimizer muon: the conv filters learn at this multiple of the learning rate")
    group.add_argument("--bn-weight", action=argparse.BooleanOptionalAction, default=None,
                       help="train BatchNorm scales (--no-bn-weight: frozen at 1)")
    group.add_argument("--dirac", action=argparse.BooleanOptionalAction, default=None,
                       help="initialise each conv's first in-channels filters as the identity")
    group.add_argument("--bn-momentum", type=float, default=None,
                       help="BatchNorm's running statistics: each batch's weight (PyTorch's default 0.1)")
    group.add_argument("--whiten-bias-epochs", type=int, default=None,
                       help="cnn94: epochs its whitening stem's bias trains (then it stays)")
    group.add_argument("--lookahead", action=argparse.BooleanOptionalAction, default=None,
                       help="average the weights along the way (airbench's Lookahead, every 5 steps)")


def top_count(text: str) -> int:
    from fmnist import data

    value = int(text)
    if not 1 <= value <= data.NUM_CLASSES:
        raise argparse.ArgumentTypeError(f"must be from 1 to {data.NUM_CLASSES}, got {value}")
    return value


def add_weights_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", choices=("final", "best"), default="final",
                        help="final weights or those of the lowest validation loss (default: final)")


def add_inference_precision_option(parser: argparse.ArgumentParser) -> None:
    from fmnist import models

    parser.add_argument("--precision", choices=models.INFERENCE_PRECISIONS, default="fp32",
                        help="compute in fp32, or in bf16: 1.4-1.9x the images/s in batches where the CPU "
                             "computes bf16 natively (AVX512-BF16, AMX) or on a GPU, no faster one image at a time, "
                             "slower on other CPUs; about 1 prediction in 1,000 changes (default: fp32)")


def subcommand(commands, name: str, handler, summary: str, description: str, examples: list[str]):
    parser = commands.add_parser(name, help=summary, description=description,
                                 epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(handler=handler)
    return parser


def add_experiment_commands(commands, handlers: dict) -> None:
    """The report's steps: data, train, evaluate, report, reproduce (and bench, for speed)."""
    add_data_and_train_commands(commands, handlers)
    add_evaluate_and_report_commands(commands, handlers)
    add_reproduce_command(commands, handlers)
    add_bench_command(commands, handlers)


def add_data_and_train_commands(commands, handlers: dict) -> None:
    from fmnist import api

    p = subcommand(commands, "data", handlers["data"], "check the dataset, print a summary, write the sample grid",
                   "Find (or download) and verify Fashion-MNIST, print its shapes and per-class counts, and "
                   "write samples.png (the first 25 training images).", ["fmnist data --out runs/data"])
    add_data_options(p)
    p.add_argument("--out", default=api.OUT["data"], help="where figures go (default: %(default)s)")

    p = subcommand(commands, "train", handlers["train"], "train the report's CNN (50 epochs, Adam, batch 128)",
                   "Train the report's CNN with its settings; writes a run directory (see runs.py).",
                   ["fmnist train --out runs/seed0", "fmnist train --epochs 2 --limit 5000 --out runs/quick",
                    "fmnist train --resume runs/seed0",
                    "torchrun --nproc-per-node 2 -m fmnist train --threads 1 --out runs/ddp"])
    add_train_options(p)
    p.add_argument("--out", default=api.OUT["train"], help="run directory to write (default: %(default)s)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run with its own settings "
                                                    "(--epochs may extend it)")

    subcommand(commands, "models", handlers["models"], "list the networks fmnist trains, with their recipes",
               "The model registry: each network's name, parameters, forward MFLOPs per image and the training "
               "recipe `fmnist train --model NAME` uses (flags override any part of it).", ["fmnist models"])


def add_evaluate_and_report_commands(commands, handlers: dict) -> None:
    p = subcommand(commands, "evaluate", handlers["evaluate"], "loss/accuracy on train and test, per-class table, figures",
                   "Evaluate a run on its training split and the test set; writes metrics.json, "
                   "predictions.csv and figures/.", ["fmnist evaluate runs/train", "fmnist evaluate runs/train "
                                                     "--weights best", "fmnist evaluate runs/res95 --precision bf16"])
    p.add_argument("run", help="run directory")
    add_weights_option(p)
    add_inference_precision_option(p)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    add_data_options(p)

    p = subcommand(commands, "report", handlers["report"], "write report.html and report.md for an evaluated run",
                   "One self-contained HTML page (and its Markdown twin) for an evaluated run.",
                   ["fmnist report runs/train"])
    p.add_argument("run", help="run directory (evaluated)")


def add_reproduce_command(commands, handlers: dict) -> None:
    from fmnist import api

    p = subcommand(commands, "reproduce", handlers["reproduce"], "the whole report in one command",
                   "Reproduce the report: data check and sample grid, training with its settings, evaluation "
                   "and report, for one or more seeds. Re-running continues where it stopped.",
                   ["fmnist reproduce", "fmnist reproduce --seeds 3",
                    "fmnist reproduce --model fast-cnn --seeds 3",
                    "fmnist reproduce --model seed-cnn --model fast-cnn --seeds 3   (one comparison table)",
                    "fmnist reproduce --model cnn94 --seeds 5 --target 0.945",
                    "fmnist reproduce --epochs 1 --limit 3000 --out /tmp/quick"])
    add_train_options(p, several_models=True)
    p.add_argument("--seeds", type=int, default=None,
                   help="number of seeds, from --seed on (default: 1 for one model, 5 to compare models)")
    p.add_argument("--target", type=float, action="append", default=None,
                   help="also state the time to this validation accuracy (always: 0.91, 0.93, 0.94); repeatable")
    p.add_argument("--workers", type=int, default=None,
                   help="train the seeds in parallel, K at a time, on Ray (pip install 'fmnist[sweep]'), "
                        "--threads each (default: one after another)")
    p.add_argument("--address", default=None, help="a Ray cluster's address for the parallel seeds (default: local)")
    p.add_argument("--out", default=api.OUT["reproduce"], help="output directory (default: %(default)s)")


def add_bench_command(commands, handlers: dict) -> None:
    from fmnist import configs

    p = subcommand(commands, "bench", handlers["bench"], "time training and evaluation against plain eager PyTorch",
                   "Time fmnist's training step and a plain eager PyTorch version of the same network on the "
                   "same batch, one epoch, and evaluation throughput.",
                   ["fmnist bench", "fmnist bench --model fast-cnn", "fmnist bench --threads 2 --json"])
    p.add_argument("--model", default=default_model(), help="the network to time (default: %(default)s; "
                                                            "see `fmnist models`)")
    p.add_argument("--quick", action="store_true", help="a few steps only, to check that it runs (default: off)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: the CPUs this process may use, by affinity and cgroup quota)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the model's recipe)")
    p.add_argument("--precision", choices=configs.PRECISIONS, default="auto",
                   help="fmnist's step precision (default: auto, as training chooses it)")
    p.add_argument("--json", action="store_true", help="print the results as JSON (default: a table)")


def add_sweep_command(commands, handlers: dict) -> None:
    from fmnist import api

    p = subcommand(commands, "sweep", handlers["sweep"], "many runs at once on Ray: recipe sweeps and seed studies",
                   "Train every configuration of a search space over a model's recipe, for several seeds, in "
                   "parallel on Ray (local, or a cluster with --address). Each trial is a run directory; "
                   "running the same command again resumes an interrupted sweep. The summary chooses on "
                   "validation accuracy and tests only the chosen configuration. Needs Ray: "
                   "pip install 'fmnist[sweep]'.",
                   ["fmnist sweep --model fast-cnn --vary learning_rate=0.05,0.1 --vary shift=1,2 --seeds 2",
                    "fmnist sweep --file sweep.toml --threads 1 --workers 2 --out runs/sweep",
                    "fmnist sweep --file sweep.toml --address 10.0.0.1:6379   (a Ray cluster)"])
    p.add_argument("--file", type=Path, help="a TOML sweep file: model, seeds, search, samples, [space], [fixed]")
    p.add_argument("--model", default=None, help="the network (default: the file's, else seed-cnn)")
    p.add_argument("--vary", action="append", metavar="NAME=V1,V2", help="a setting and its values (repeatable)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="a setting held fixed (repeatable)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default: the file's, else 1)")
    p.add_argument("--search", choices=("grid", "random"), default=None, help="every combination, or --samples "
                                                                           "random ones (default: grid)")
    p.add_argument("--samples", type=int, default=None, help="random search: configurations (default: 8)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per trial (default: 1)")
    p.add_argument("--workers", type=int, default=None,
                   help="trials at once (default: the CPUs this process may use / --threads)")
    p.add_argument("--address", default=None, help="a Ray cluster's address (default: a local Ray instance)")
    p.add_argument("--quiet", action="store_true", help="no Tune progress table (default: off)")
    p.add_argument("--out", default=api.OUT["sweep"], help="output directory (default: %(default)s)")


def add_use_commands(commands, handlers: dict) -> None:
    """Using a trained model: predict, export, import-keras, serve."""
    add_predict_and_export_commands(commands, handlers)
    add_import_and_serve_commands(commands, handlers)


def add_predict_and_export_commands(commands, handlers: dict) -> None:
    p = subcommand(commands, "predict", handlers["predict"], "classify your own images (PNG, JPEG, WebP, BMP, GIF, ...)",
                   "Classify images, preprocessed as Fashion-MNIST was made from product photos. Prints the "
                   "top classes per file; exit code 1 if any file failed.",
                   ["fmnist predict runs/train shoe.jpg bag.png",
                    "fmnist predict runs/train photos/ --json --save-preprocessed seen/"])
    p.add_argument("run", help="run directory")
    p.add_argument("images", nargs="+", type=Path, help="image files or directories")
    p.add_argument("--top", type=top_count, default=3, help="classes to show per image, 1 to 10 (default: 3)")
    p.add_argument("--json", action="store_true", help="print JSON (default: one line per file)")
    p.add_argument("--save-preprocessed", metavar="DIR", help="save the 28x28 the model saw (default: don't)")
    add_weights_option(p)
    add_inference_precision_option(p)

    p = subcommand(commands, "export", handlers["export"], "export a run to ONNX (checked with onnxruntime) or Keras",
                   "Export to ONNX: input (N, 28, 28, 1) float32 in [0, 1], probabilities out, class names in "
                   "the metadata; verified against PyTorch on 1,000 test images. Or, for the report's network "
                   "(seed-cnn), to a Keras 3 .keras file that keras.saving.load_model reads.",
                   ["fmnist export runs/train --format onnx", "fmnist export runs/train --format keras"])
    p.add_argument("run", help="run directory")
    p.add_argument("--format", choices=("onnx", "keras"), default="onnx", help="export format (default: onnx)")
    p.add_argument("--out", help="output file (default: RUN/model.onnx or RUN/model.keras)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check (default: check)")
    add_weights_option(p)
    add_data_options(p)


def add_import_and_serve_commands(commands, handlers: dict) -> None:
    from fmnist import api

    p = subcommand(commands, "import-keras", handlers["import_keras"], "turn a Keras .keras/.h5 model into a run",
                   "Import a Keras model with the report's architecture (Keras 3 .keras or legacy .h5). Reads "
                   "JSON and arrays only: no code from the file runs.",
                   ["fmnist import-keras my_model.keras --out runs/keras", "fmnist evaluate runs/keras"])
    p.add_argument("model", help="the .keras or .h5 file")
    p.add_argument("--out", default=api.OUT["keras"], help="run directory to write (default: %(default)s)")

    p = subcommand(commands, "serve", handlers["serve"], "serve a run over HTTP, with a page to try images",
                   "HTTP server: POST /predict (raw image body or multipart, several files allowed), "
                   "GET /health, GET / (a page to drop images on).",
                   ["fmnist serve runs/train --port 8000", "curl -F file=@shoe.jpg http://127.0.0.1:8000/predict",
                    "fmnist serve runs/res95 --precision bf16",
                    "fmnist serve runs/train --replicas 2", "fmnist serve runs/train --replicas 8 --address HEAD:6379"])
    p.add_argument("run", help="run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=8000, help="port (default: 8000; 0: any free one)")
    p.add_argument("--max-bytes", type=int, default=None,
                   help="request size limit in bytes (default: the server's, serve.MAX_BYTES)")
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="a host name clients may use (repeatable; default: 127.0.0.1 and localhost on a loopback "
                        "address, any name otherwise)")
    p.add_argument("--replicas", type=int, metavar="N",
                   help="serve with N replicas on Ray Serve (pip install 'fmnist[serve-ray]'; default: one process)")
    p.add_argument("--address", help="a Ray cluster's address for the replicas (default: a local Ray instance)")
    add_inference_precision_option(p)


def port_number(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, not {text!r}")
    return int(text)


def build_parser(handlers: dict) -> argparse.ArgumentParser:
    """The whole command line; `handlers` maps each command to its function (cli.py's cmd_*)."""
    parser = argparse.ArgumentParser(
        prog="fmnist", description="Train, evaluate, understand and use Fashion-MNIST classifiers.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fmnist {version.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_experiment_commands(commands, handlers)
    add_sweep_command(commands, handlers)
    add_use_commands(commands, handlers)
    return parser
