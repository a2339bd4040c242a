"""The `fmnist` command: a thin layer of argument parsing over the package's functions.

Each subcommand is one `cmd_*` function; anything a user can get wrong raises an
`errors.FmnistError`, printed here as one line (exit code 2), never as a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import rich.console
import rich.markup
import rich.table

from fmnist import errors, machine, progress, version

console = progress.console  # one console for the CLI and the library's progress
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
    from fmnist import data, figures, files

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
    path = figures.samples(dataset.train_images, dataset.train_labels, files.output_dir(args.out) / "samples.png")
    console.print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------------------
def recipe_settings(args) -> dict:
    """The training flags as TrainConfig fields (None: not given, the model's recipe decides)."""
    return dict(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                validation_fraction=args.validation_fraction, threads=args.threads, device=args.device,
                limit=args.limit, data_dir=str(args.data_dir) if args.data_dir else None, dropout=args.dropout,
                precision=args.precision, optimizer=args.optimizer, weight_decay=args.weight_decay,
                schedule=args.schedule, warmup=args.warmup, label_smoothing=args.label_smoothing, flip=args.flip,
                shift=args.shift, tta=args.tta)


def train_config(args):
    """The model's recipe (TrainConfig.for_model), with the flags that were given on top."""
    from fmnist import models, training

    try:
        return training.TrainConfig.for_model(args.model or models.DEFAULT, seed=args.seed, **recipe_settings(args))
    except ValueError as exc:
        raise errors.FmnistError(str(exc)) from None


def cmd_train(args) -> int:
    from fmnist import api, models, training

    console.quiet = os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 speaks
    if args.resume:
        run_dir = Path(args.resume)
        overrides = {"epochs": args.epochs} if args.epochs else {}
        config = training.load_config(run_dir, **overrides)
        console.print(f"resuming {run_dir}")
    else:
        run_dir = Path(args.out)
        config = train_config(args)
        print_summary(config.model, models.get(config.model).build(config.dropout))
    history = api.fit_with_progress(config, run_dir, resume=bool(args.resume), show_progress=not args.quiet)
    best = min(history, key=lambda row: row["val_loss"])
    console.print(f"done: {run_dir} (lowest val_loss {best['val_loss']:.4f} at epoch {best['epoch']}); "
                  f"next: fmnist evaluate {run_dir}")
    return 0


def print_summary(name: str, network) -> None:
    from fmnist import models

    table = rich.table.Table(title=f"Model: {name}")
    for column in ("Layer (type)", "Output Shape", "Param #"):
        table.add_column(column, justify="right" if column == "Param #" else "left")
    for layer, shape, count in models.layer_table(network):
        table.add_row(layer, shape, f"{count:,}")
    console.print(table)
    console.print(f"Total params: {models.parameters(network):,}")


def add_train_options(parser: argparse.ArgumentParser, several_models: bool = False) -> None:
    """Training flags. Recipe settings default to None: the model's recipe decides (`fmnist models`)."""
    parser.add_argument("--model", default=None, action="append" if several_models else "store",
                        help="the network to train (default: seed-cnn, the report's; see `fmnist models`)"
                             + ("; repeat it to compare models" if several_models else ""))
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the model's recipe)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default: the model's recipe)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="learning rate (default: the model's recipe)")
    parser.add_argument("--validation-fraction", type=float, default=None,
                        help="last fraction of the training images held out, as Keras's validation_split "
                             "(default: the model's recipe; the report's 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: the CPUs this process may use, by affinity and cgroup quota)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    parser.add_argument("--limit", type=int, default=None,
                        help="use only the first N training images, for quick runs (default: all 60,000)")
    parser.add_argument("--dropout", type=float, default=None, help="dropout rate (default: the model's recipe)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="bf16 autocast for speed on CPUs/GPUs that support it (default: fp32)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (default: off)")
    add_recipe_options(parser)
    add_data_options(parser)


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    from fmnist import recipe

    group = parser.add_argument_group("recipe (each default: the model's recipe, see `fmnist models`)")
    group.add_argument("--optimizer", choices=recipe.OPTIMIZERS, default=None,
                       help="adam (Keras's, the report's), sgd (Nesterov momentum 0.9) or adamw")
    group.add_argument("--weight-decay", type=float, default=None, help="on weights, not biases or BatchNorm")
    group.add_argument("--schedule", choices=recipe.SCHEDULES, default=None,
                       help="constant, or onecycle: linear warm-up to --learning-rate, then linear decay to 0")
    group.add_argument("--warmup", type=float, default=None, help="fraction of all steps spent warming up")
    group.add_argument("--label-smoothing", type=float, default=None, help="e.g. 0.1")
    group.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                       help="mirror a random half of the training images each epoch")
    group.add_argument("--shift", type=int, default=None, help="move each training image up to N pixels")
    group.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                       help="evaluate and predict on the mean of each image and its mirror")


def cmd_models(args) -> int:
    """The registry as a table; measured accuracy and time are in the README, not here."""
    from fmnist import models, training

    table = rich.table.Table(title="models (fmnist train --model NAME)")
    for column in ("name", "parameters", "MFLOPs/image", "recipe"):
        table.add_column(column, justify="right" if column in ("parameters", "MFLOPs/image") else "left")
    for name, spec in models.REGISTRY.items():
        config, network = training.TrainConfig.for_model(name), spec.build(0.0)
        table.add_row(name + (" (default)" if name == models.DEFAULT else ""), f"{models.parameters(network):,}",
                      f"{models.mflops_per_image(network):.2f}", training.describe_recipe(config))
    console.print(table)
    for name, spec in models.REGISTRY.items():
        console.print(f"{name}: {spec.description} (weights tagged {spec.architecture})")
    return 0


def cmd_evaluate(args) -> int:
    from fmnist import evaluate, runs

    weights = runs.BEST_WEIGHTS if args.weights == "best" else runs.WEIGHTS
    with console.status("evaluating on the training split and the test set"):
        metrics = evaluate.evaluate_run(Path(args.run), weights=weights, data_dir=args.data_dir, device=args.device)
    print_metrics(metrics)
    console.print(f"wrote {Path(args.run) / runs.METRICS}, {runs.PREDICTIONS} and {runs.FIGURES}/; "
                  f"next: fmnist report {args.run}")
    return 0


def print_metrics(metrics: dict) -> None:
    from fmnist import data

    test, train_m = metrics["test"], metrics["train"]
    overall = rich.table.Table(title="loss and accuracy")
    for column in ("data", "images", "loss", "accuracy"):
        overall.add_column(column, justify="left" if column == "data" else "right")
    overall.add_row("training split", f"{train_m['count']:,}", f"{train_m['loss']:.4f}", f"{train_m['accuracy']:.4f}")
    overall.add_row("test set", f"{test['count']:,}", f"{test['loss']:.4f}", f"{test['accuracy']:.4f}")
    console.print(overall)
    per_class = rich.table.Table(title="test set, per class")
    for column in ("class", "precision", "recall", "f1-score", "support"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    report = test["classification_report"]
    for name in (*data.CLASS_NAMES, "macro avg", "weighted avg"):
        row = report[name]
        per_class.add_row(name, f"{row['precision']:.2f}", f"{row['recall']:.2f}", f"{row['f1-score']:.2f}",
                          f"{int(row['support']):,}")
    console.print(per_class)
    console.print(f"right: {test['correct']:,}  wrong: {test['wrong']:,}  (the report: 9,059 / 941)")


def cmd_report(args) -> int:
    from fmnist import report

    html_path, md_path = report.write_report(Path(args.run))
    console.print(f"wrote {html_path} and {md_path}")
    return 0


def cmd_reproduce(args) -> int:
    """The whole experiment (api.reproduce), printing each seed's metrics, the summaries, the comparison."""
    from fmnist import api, models, report

    out, names = Path(args.out), list(dict.fromkeys(args.model or [models.DEFAULT]))
    settings = recipe_settings(args)
    for name in names:  # every model's settings checked before hours of training
        train_config(argparse.Namespace(**{**vars(args), "model": name}))
    cmd_data(argparse.Namespace(data_dir=args.data_dir, out=out))

    def on_seed(name, seed, metrics, html_path):
        print_metrics(metrics)
        console.print(f"report: {html_path}")

    if args.workers or args.address:
        settings["threads"] = settings["threads"] or 1  # per parallel seed
    summaries = api.reproduce(names, args.seeds, out, first_seed=args.seed, show_progress=not args.quiet,
                              on_seed=on_seed, workers=args.workers, address=args.address, **settings)
    for name, summary in summaries.items():
        model_out = out / name if len(names) > 1 else out
        console.print(report.summary_markdown(summary))
        console.print(f"summary: {model_out / 'summary.md'}")
    if len(names) > 1:
        console.print((out / "comparison.md").read_text())
        console.print(f"comparison: {out / 'comparison.md'}")
    return 0


def cmd_sweep(args) -> int:
    """A sweep file and/or flags -> trials on Ray -> the summary, chosen on validation."""
    from fmnist import sweep

    loaded = sweep.load_file(args.file) if args.file else {}
    try:
        config = sweep.SweepConfig(
            model=args.model or loaded.get("model", models_default()),
            space={**loaded.get("space", {}), **sweep.parse_assignments(args.vary, several=True)},
            fixed={**loaded.get("fixed", {}), **sweep.parse_assignments(args.set, several=False)},
            seeds=args.seeds or loaded.get("seeds", 1), search=args.search or loaded.get("search", "grid"),
            samples=args.samples or loaded.get("samples", 8))
    except (TypeError, ValueError) as exc:
        raise errors.FmnistError(f"sweep: {exc}") from None
    count = len(config.configurations()) * config.seeds
    console.print(f"sweep of {config.model}: {len(config.configurations())} configurations x {config.seeds} seeds "
                  f"= {count} trials, {args.threads} threads each, into {args.out}")
    results = sweep.run(config, Path(args.out), args.threads, args.workers, args.address, verbose=0 if args.quiet else 1)
    with console.status("evaluating the chosen configuration on the test set"):
        summary = sweep.summarise(results)
    paths = sweep.write_summary(summary, Path(args.out))
    console.print(sweep.summary_markdown(summary))
    console.print(f"wrote {', '.join(str(path) for path in paths)}")
    return 0


def models_default() -> str:
    from fmnist import models

    return models.DEFAULT


def cmd_bench(args) -> int:
    import json

    from fmnist import bench

    with console.status("timing training steps, an epoch and evaluation"):
        try:
            result = bench.run(quick=args.quick, device=args.device, threads=args.threads, batch_size=args.batch_size,
                               precision=args.precision, name=args.model)
        except ValueError as exc:
            raise errors.FmnistError(str(exc)) from None
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    m = result["machine"]
    console.print(f"machine: {m['device_name']} ({m['device']}, {m['threads']} threads), torch {m['torch']}; "
                  f"{result['model']} in {result['precision']}")
    table = rich.table.Table(title=f"training step, batch {result['batch_size']} (median of interleaved rounds)")
    for column in ("implementation", "ms/step", "samples/s", "speed-up"):
        table.add_column(column, justify="left" if column == "implementation" else "right")
    baseline = result["step_seconds"]["plain eager PyTorch"]
    for name, seconds in result["step_seconds"].items():
        table.add_row(name, f"{1000 * seconds:.2f}", f"{result['batch_size'] / seconds:,.0f}",
                      f"{baseline / seconds:.2f}x")
    console.print(table)
    console.print(f"the step's convolutions and matrix products alone (the floor under any step here): "
                  f"{1000 * result['floor_seconds']:.2f} ms")
    console.print(f"one epoch of {result['epoch_images']:,} images: {result['epoch_seconds']:.2f} s "
                  f"+ validation {result['validation_seconds']:.2f} s")
    console.print(f"evaluation: {result['eval_images_per_second']:,.0f} images/s")
    return 0


def cmd_predict(args) -> int:
    """Top 3 per file; a bad file is reported in one line and the others are still predicted."""
    import json

    import PIL.Image

    from fmnist import files, inference, predict, runs

    network = inference.load_model(Path(args.run), runs.BEST_WEIGHTS if args.weights == "best" else runs.WEIGHTS)
    paths = predict.expand_paths(args.images)
    if not paths:
        raise errors.InputError("no image files found in " + ", ".join(map(str, args.images)))
    out_dir = files.output_dir(args.save_preprocessed) if args.save_preprocessed else None
    names = predict.preprocessed_names(paths)
    results, failures = [], 0
    for path in paths:
        try:
            pixels = predict.preprocess(predict.open_image(path, str(path)))
        except errors.InputError as exc:
            failures += 1
            report_error(str(exc), 1)
            results.append({"file": str(path), "error": str(exc)})
            continue
        top = predict.classify(network, pixels[None], k=args.top)[0]
        results.append({"file": str(path), "top": top})
        if out_dir:
            saved = runs.write_atomic(out_dir / names[path], lambda tmp: PIL.Image.fromarray(pixels).save(tmp, "PNG"))
            results[-1]["preprocessed"] = str(saved)
        if not args.json:
            ranked = ", ".join(f"{t['class']} {t['probability']:.1%}" for t in top)
            console.print(f"{path}: {ranked}", soft_wrap=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failures else 0


def cmd_export(args) -> int:
    from fmnist import api, data, export, files

    run = api.open_run(args.run)
    out = files.output_file(args.out, f"model.{args.format}") if args.out else None
    path = run.export(args.format, out, args.weights, verify=False)
    console.print(f"wrote {path}")
    if args.format == "onnx" and not args.no_verify:
        dataset = data.load(data_dir=args.data_dir)
        difference = export.verify(run.path, path, dataset.test_images[:1000], api.weights_file(args.weights))
        console.print(f"checked: onnxruntime vs PyTorch on 1,000 test images, max abs difference {difference:.1e}")
    elif args.format == "keras":
        console.print("load it with keras.saving.load_model (Keras 3); fmnist import-keras reads it back")
    return 0


def cmd_import_keras(args) -> int:
    from fmnist import keras_import

    run_dir = keras_import.import_keras(Path(args.model), Path(args.out))
    console.print(f"imported {args.model} into {run_dir}; next: fmnist evaluate {run_dir}")
    return 0


def cmd_serve(args) -> int:
    from fmnist import serve

    if args.replicas is not None or args.address:
        return serve_on_ray(args)
    console.print(f"serving {args.run} on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    serve.serve(Path(args.run), host=args.host, port=args.port, max_bytes=args.max_bytes,
                allowed_hosts=args.allowed_host)
    return 0


def serve_on_ray(args) -> int:
    """Deploy on Ray Serve, then wait for Ctrl-C (or SIGTERM), which shuts the deployment down."""
    import signal
    import threading

    from fmnist import serve_ray

    replicas = 1 if args.replicas is None else args.replicas
    serve_ray.deploy(Path(args.run), replicas, host=args.host, port=args.port, address=args.address,
                     max_bytes=args.max_bytes, allowed_hosts=args.allowed_host)
    console.print(f"serving {args.run} on http://{args.host}:{args.port}/ with {replicas} Ray Serve "
                  f"replica{'s' * (replicas > 1)} (Ctrl-C stops)")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    serve_ray.shutdown()
    return 0


def top_count(text: str) -> int:
    from fmnist import data

    value = int(text)
    if not 1 <= value <= data.NUM_CLASSES:
        raise argparse.ArgumentTypeError(f"must be from 1 to {data.NUM_CLASSES}, got {value}")
    return value


def add_weights_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", choices=("final", "best"), default="final",
                        help="final weights or those of the lowest validation loss (default: final)")


# ---------------------------------------------------------------------------------------------
def subcommand(commands, name: str, handler, summary: str, description: str, examples: list[str]):
    parser = commands.add_parser(name, help=summary, description=description,
                                 epilog="examples:\n" + "\n".join(f"  {e}" for e in examples),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(handler=handler)
    return parser


def add_experiment_commands(commands) -> None:
    """The report's steps: data, train, evaluate, report, reproduce (and bench, for speed)."""
    p = subcommand(commands, "data", cmd_data, "check the dataset, print a summary, write the sample grid",
                   "Find (or download) and verify Fashion-MNIST, print its shapes and per-class counts, and "
                   "write samples.png (the first 25 training images).", ["fmnist data --out runs/data"])
    add_data_options(p)
    p.add_argument("--out", default="runs/data", help="where figures go (default: runs/data)")

    p = subcommand(commands, "train", cmd_train, "train the report's CNN (50 epochs, Adam, batch 128)",
                   "Train the report's CNN with its settings; writes a run directory (see runs.py).",
                   ["fmnist train --out runs/seed0", "fmnist train --epochs 2 --limit 5000 --out runs/quick",
                    "fmnist train --resume runs/seed0",
                    "torchrun --nproc-per-node 2 -m fmnist train --threads 1 --out runs/ddp"])
    add_train_options(p)
    p.add_argument("--out", default="runs/train", help="run directory to write (default: runs/train)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run with its own settings "
                                                    "(--epochs may extend it)")

    subcommand(commands, "models", cmd_models, "list the networks fmnist trains, with their recipes",
               "The model registry: each network's name, parameters, forward MFLOPs per image and the training "
               "recipe `fmnist train --model NAME` uses (flags override any part of it).", ["fmnist models"])

    p = subcommand(commands, "evaluate", cmd_evaluate, "loss/accuracy on train and test, per-class table, figures",
                   "Evaluate a run on its training split and the test set; writes metrics.json, "
                   "predictions.csv and figures/.", ["fmnist evaluate runs/train", "fmnist evaluate runs/train "
                                                     "--weights best"])
    p.add_argument("run", help="run directory")
    add_weights_option(p)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    add_data_options(p)

    p = subcommand(commands, "report", cmd_report, "write report.html and report.md for an evaluated run",
                   "One self-contained HTML page (and its Markdown twin) for an evaluated run.",
                   ["fmnist report runs/train"])
    p.add_argument("run", help="run directory (evaluated)")

    p = subcommand(commands, "reproduce", cmd_reproduce, "the whole report in one command",
                   "Reproduce the report: data check and sample grid, training with its settings, evaluation "
                   "and report, for one or more seeds. Re-running continues where it stopped.",
                   ["fmnist reproduce", "fmnist reproduce --seeds 3",
                    "fmnist reproduce --model fast-cnn --seeds 3",
                    "fmnist reproduce --model seed-cnn --model fast-cnn --seeds 3   (one comparison table)",
                    "fmnist reproduce --epochs 1 --limit 3000 --out /tmp/quick"])
    add_train_options(p, several_models=True)
    p.add_argument("--seeds", type=int, default=1, help="number of seeds, from --seed on (default: 1)")
    p.add_argument("--workers", type=int, default=None,
                   help="train the seeds in parallel, K at a time, on Ray (pip install 'fmnist[sweep]'), "
                        "--threads each (default: one after another)")
    p.add_argument("--address", default=None, help="a Ray cluster's address for the parallel seeds (default: local)")
    p.add_argument("--out", default="runs/reproduce", help="output directory (default: runs/reproduce)")

    p = subcommand(commands, "bench", cmd_bench, "time training and evaluation against plain eager PyTorch",
                   "Time fmnist's training step and a plain eager PyTorch version of the same network on the "
                   "same batch, one epoch, and evaluation throughput.",
                   ["fmnist bench", "fmnist bench --model fast-cnn", "fmnist bench --threads 2 --json"])
    p.add_argument("--model", default=models_default(), help="the network to time (default: %(default)s; "
                                                            "see `fmnist models`)")
    p.add_argument("--quick", action="store_true", help="a few steps only, to check that it runs (default: off)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: the CPUs this process may use, by affinity and cgroup quota)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="fmnist's step precision "
                                                                                  "(default: fp32)")
    p.add_argument("--json", action="store_true", help="print the results as JSON (default: a table)")


def add_sweep_command(commands) -> None:
    p = subcommand(commands, "sweep", cmd_sweep, "many runs at once on Ray: recipe sweeps and seed studies",
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
    p.add_argument("--out", default="runs/sweep", help="output directory (default: runs/sweep)")


def add_use_commands(commands) -> None:
    """Using a trained model: predict, export, import-keras, serve."""
    p = subcommand(commands, "predict", cmd_predict, "classify your own images (PNG, JPEG, WebP, BMP, GIF, ...)",
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

    p = subcommand(commands, "export", cmd_export, "export a run to ONNX (checked with onnxruntime) or Keras",
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

    p = subcommand(commands, "import-keras", cmd_import_keras, "turn a Keras .keras/.h5 model into a run",
                   "Import a Keras model with the report's architecture (Keras 3 .keras or legacy .h5). Reads "
                   "JSON and arrays only: no code from the file runs.",
                   ["fmnist import-keras my_model.keras --out runs/keras", "fmnist evaluate runs/keras"])
    p.add_argument("model", help="the .keras or .h5 file")
    p.add_argument("--out", default="runs/keras", help="run directory to write (default: runs/keras)")

    p = subcommand(commands, "serve", cmd_serve, "serve a run over HTTP, with a page to try images",
                   "HTTP server: POST /predict (raw image body or multipart, several files allowed), "
                   "GET /health, GET / (a page to drop images on).",
                   ["fmnist serve runs/train --port 8000", "curl -F file=@shoe.jpg http://127.0.0.1:8000/predict",
                    "fmnist serve runs/train --replicas 2", "fmnist serve runs/train --replicas 8 --address HEAD:6379"])
    p.add_argument("run", help="run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--max-bytes", type=int, default=5 * 1024 * 1024, help="request size limit (default: 5 MB)")
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="a host name clients may use (repeatable; default: 127.0.0.1 and localhost on a loopback "
                        "address, any name otherwise)")
    p.add_argument("--replicas", type=int, metavar="N",
                   help="serve with N replicas on Ray Serve (pip install 'fmnist[serve-ray]'; default: one process)")
    p.add_argument("--address", help="a Ray cluster's address for the replicas (default: a local Ray instance)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fmnist", description="Train, evaluate, understand and use Fashion-MNIST classifiers.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fmnist {version.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_experiment_commands(commands)
    add_sweep_command(commands)
    add_use_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        if args.command != "data":  # every other command computes with torch
            prepare_kernels(getattr(args, "threads", None))
        return args.handler(args)
    except errors.FmnistError as exc:
        return report_error(str(exc), getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:  # before or after training (training's own Ctrl-C says how to resume)
        return report_error("interrupted", errors.Interrupted.exit_code)
    except OSError as exc:  # the machine's side: disk full, permissions, a path of the wrong kind
        return report_error(f"{f'{exc.filename}: ' if exc.filename else ''}{exc.strerror or exc}", 2)


def prepare_kernels(threads: int | None) -> None:
    from fmnist import kernels
    from fmnist import threads as cpu_threads

    machine.flush_denormals()  # first, so that torch's worker threads inherit it
    cpu_threads.use(threads)  # then the pool's size (numba's follows it)
    with console.status("preparing the CPU kernels (compiled on first use, then cached)"):
        kernels.available()


def report_error(message: str, exit_code: int) -> int:
    error_console.print(f"[bold red]error:[/] {rich.markup.escape(message)}", soft_wrap=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
