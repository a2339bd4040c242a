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

from fmnist import cli_args, errors, progress

console = progress.console  # one console for the CLI and the library's progress
error_console = rich.console.Console(stderr=True, highlight=False)
# ---------------------------------------------------------------------------------------------
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
    """The training flags as TrainConfig fields (None: not given, the model's recipe decides): every
    recipe and runtime field has its flag (--batch-size for batch_size)."""
    from fmnist import configs

    settings = {name: getattr(args, name) for name in configs.RECIPE_FIELDS + configs.RUNTIME_FIELDS if name != "model"}
    return {**settings, "data_dir": str(args.data_dir) if args.data_dir else None}


def train_config(args):
    """The model's recipe (TrainConfig.for_model), with the flags that were given on top."""
    from fmnist import configs, models

    try:
        return configs.TrainConfig.for_model(args.model or models.DEFAULT, seed=args.seed, **recipe_settings(args))
    except ValueError as exc:
        raise errors.FmnistError(str(exc)) from None


def cmd_train(args) -> int:
    from fmnist import api, models, runs

    console.quiet = os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 speaks
    if args.resume:
        run_dir = Path(args.resume)
        console.print(f"resuming {run_dir}")
        run = api.train(out=run_dir, resume=True, show_progress=not args.quiet,
                        **({"epochs": args.epochs} if args.epochs else {}))
    else:
        run_dir, config = Path(args.out), train_config(args)
        print_summary(config.model, models.get(config.model).build(config.dropout))
        run = api.train(config, run_dir, show_progress=not args.quiet)
    if console.quiet:  # under torchrun, rank 0 reports (and only it has written the last epoch for sure)
        return 0
    validated = runs.validated(run.history)
    if validated:
        best = min(validated, key=lambda row: row["val_loss"])
        done = f"lowest val_loss {best['val_loss']:.4f} at epoch {best['epoch']}"
    else:
        done = "trained on every training image: nothing validated"
    console.print(f"done: {run_dir} ({done}); next: fmnist evaluate {run_dir}")
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


def cmd_models(args) -> int:
    """The registry as a table; measured accuracy and time are in the README, not here."""
    from fmnist import configs, models

    table = rich.table.Table(title="models (fmnist train --model NAME)")
    for column in ("name", "parameters", "MFLOPs/image", "recipe"):
        table.add_column(column, justify="right" if column in ("parameters", "MFLOPs/image") else "left")
    for name, spec in models.REGISTRY.items():
        config, network = configs.TrainConfig.for_model(name), spec.build(0.0)
        table.add_row(name + (" (default)" if name == models.DEFAULT else ""), f"{models.parameters(network):,}",
                      f"{models.mflops_per_image(network):.2f}", config.describe())
    console.print(table)
    for name, spec in models.REGISTRY.items():
        console.print(f"{name}: {spec.description} (weights tagged {spec.architecture})")
    return 0


def cmd_evaluate(args) -> int:
    from fmnist import api, runs

    with console.status("evaluating on the training split and the test set"):
        metrics = api.open_run(args.run).evaluate(args.weights, args.device, args.data_dir, args.precision)
    print_metrics(metrics)
    console.print(f"wrote {Path(args.run) / runs.METRICS}, {runs.PREDICTIONS} and {runs.FIGURES}/; "
                  f"next: fmnist report {args.run}")
    return 0


def print_metrics(metrics: dict) -> None:
    from fmnist import data, report

    test, train_m = metrics["test"], metrics["train"]
    overall = rich.table.Table(title=f"loss and accuracy, computed in {metrics.get('precision', 'fp32')}")
    for column in ("data", "images", "loss", "accuracy"):
        overall.add_column(column, justify="left" if column == "data" else "right")
    overall.add_row("training split", f"{train_m['count']:,}", f"{train_m['loss']:.4f}", f"{train_m['accuracy']:.4f}")
    overall.add_row("test set", f"{test['count']:,}", f"{test['loss']:.4f}", f"{test['accuracy']:.4f}")
    console.print(overall)
    per_class = rich.table.Table(title="test set, per class")
    for column in ("class", "precision", "recall", "f1-score", "support"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    per_class_report = test["classification_report"]
    for name in (*data.CLASS_NAMES, "macro avg", "weighted avg"):
        row = per_class_report[name]
        per_class.add_row(name, f"{row['precision']:.2f}", f"{row['recall']:.2f}", f"{row['f1-score']:.2f}",
                          f"{int(row['support']):,}")
    console.print(per_class)
    console.print(f"right: {test['correct']:,}  wrong: {test['wrong']:,}  (the report: {report.PUBLISHED_COUNTS})")


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
    seeds = api.default_seeds(names, args.seeds)
    api.reproduce_configs(names, seeds, args.seed, **settings)  # every model's settings, before hours of training
    api.check_targets(args.target or [])
    api.check_counts(workers=args.workers)
    cmd_data(argparse.Namespace(data_dir=args.data_dir, out=out))

    def on_seed(name, seed, metrics, html_path):
        print_metrics(metrics)
        console.print(f"report: {html_path}")

    if args.workers or args.address:
        settings["threads"] = settings["threads"] or 1  # per parallel seed
    summaries = api.reproduce(names, seeds, out, first_seed=args.seed, show_progress=not args.quiet,
                              targets=args.target or [],
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
    from fmnist import api, sweep

    config = api.sweep_config(args.file, args.model, args.vary, args.set, args.seeds, args.search, args.samples)
    api.check_counts(workers=args.workers, threads=args.threads)
    count = len(config.configurations()) * config.seeds
    console.print(f"sweep of {config.model}: {len(config.configurations())} configurations x {config.seeds} seeds "
                  f"= {count} trials, {args.threads} threads each, into {args.out}")
    summary, paths = api.sweep(config, args.out, args.threads, args.workers, args.address, 0 if args.quiet else 1)
    console.print(sweep.summary_markdown(summary))
    console.print(f"wrote {', '.join(str(path) for path in paths)}")
    return 0


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
                  f"{1000 * result['floor_seconds']:.2f} ms; fmnist's step is "
                  f"{result['step_seconds']['fmnist'] / result['floor_seconds']:.2f}x its floor")
    console.print(f"one epoch of {result['epoch_images']:,} images: {result['epoch_seconds']:.2f} s "
                  f"+ validation {result['validation_seconds']:.2f} s")
    console.print("evaluation: " + ", ".join(f"{rate:,.0f} images/s in {precision}" for precision, rate
                                            in result["eval_images_per_second"].items()))
    return 0


def cmd_predict(args) -> int:
    """Top classes per file; a bad file is reported in one line and the others are still predicted."""
    import json

    from fmnist import api

    results = api.open_run(args.run).predict_files(args.images, args.top, args.weights, args.save_preprocessed,
                                                   args.precision)
    for result in results:
        if "error" in result:
            report_error(result["error"], 1)
        elif not args.json:
            ranked = ", ".join(f"{t['class']} {t['probability']:.1%}" for t in result["top"])
            console.print(f"{result['file']}: {ranked}", soft_wrap=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if any("error" in result for result in results) else 0


def cmd_export(args) -> int:
    from fmnist import api, files

    run = api.open_run(args.run)
    out = files.output_file(args.out, f"model.{args.format}") if args.out else None
    path = run.export(args.format, out, args.weights, verify=False)
    console.print(f"wrote {path}")
    if args.format == "onnx" and not args.no_verify:
        difference = run.verify_onnx(path, args.weights, args.data_dir)
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

    args.max_bytes = args.max_bytes or serve.MAX_BYTES  # the limit is the server's fact
    if args.replicas is not None or args.address:
        return serve_on_ray(args)
    sock = serve.listening_socket(args.host, args.port)  # a taken port fails here, before the model loads
    port = sock.getsockname()[1]  # --port 0: the free port the system chose
    console.print(f"serving {args.run} in {args.precision} on http://{args.host}:{port}/ (Ctrl-C stops)")
    serve.serve(Path(args.run), sock, max_bytes=args.max_bytes, allowed_hosts=args.allowed_host,
                precision=args.precision)
    return 0


def serve_on_ray(args) -> int:
    """Deploy on Ray Serve, then wait for Ctrl-C (or SIGTERM), which shuts the deployment down."""
    import signal
    import threading

    from fmnist import serve_ray

    replicas = 1 if args.replicas is None else args.replicas
    serve_ray.deploy(Path(args.run), replicas, host=args.host, port=args.port, address=args.address,
                     max_bytes=args.max_bytes, allowed_hosts=args.allowed_host, precision=args.precision)
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


# ---------------------------------------------------------------------------------------------
HANDLERS = {"data": cmd_data, "train": cmd_train, "models": cmd_models, "evaluate": cmd_evaluate, "report": cmd_report,
            "reproduce": cmd_reproduce, "sweep": cmd_sweep, "bench": cmd_bench, "predict": cmd_predict,
            "export": cmd_export, "import_keras": cmd_import_keras, "serve": cmd_serve}


def main(argv: list[str] | None = None) -> int:
    parser = cli_args.build_parser(HANDLERS)
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
    from fmnist import kernels, machine
    from fmnist import threads as cpu_threads

    machine.set_cpu_modes()  # first, so that torch's worker threads inherit it
    cpu_threads.use(threads)  # then the pool's size (numba's follows it)
    with console.status("preparing the CPU kernels (compiled on first use, then cached)"):
        kernels.available()


def report_error(message: str, exit_code: int) -> int:
    error_console.print(f"[bold red]error:[/] {rich.markup.escape(message)}", soft_wrap=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
