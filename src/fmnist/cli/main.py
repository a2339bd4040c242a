"""The `fmnist` command: each subcommand is one `cmd_*` function that parses, calls the API, and prints.

Anything a user can get wrong raises an `errors.FmnistError`, printed here as one line (exit code 2), never
as a traceback. The flags and examples are in flags.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

import rich.console
import rich.markup
import rich.table

from fmnist import api
from fmnist.cli import flags
from fmnist.core import errors, progress

console = progress.console  # one console for the CLI and the library's progress
error_console = rich.console.Console(stderr=True, highlight=False)


def table(title: str, columns: tuple[str, ...], rows, left: int = 1) -> rich.table.Table:
    """A table whose first `left` columns are text and the rest numbers (right-aligned)."""
    out = rich.table.Table(title=title)
    for index, column in enumerate(columns):
        out.add_column(column, justify="left" if index < left else "right")
    for row in rows:
        out.add_row(*map(str, row))
    return out


# ---------------------------------------------------------------------------------------------
def cmd_data(args) -> int:
    summary = api.data_summary(args.data_dir, args.out)
    console.print(f"source: {summary['source']}  (loaded and verified in {summary['seconds']:.2f} s)")
    parts = summary["parts"]
    columns = ("images_shape", "images_dtype", "pixel_range", "labels_shape", "labels_dtype")
    shapes = [(part, *(p[column] for column in columns)) for part, p in parts.items()]
    console.print(table("Fashion-MNIST", ("", "images", "dtype", "pixel range", "labels", "dtype"), shapes, left=6))
    counts = [
        (label, name, f"{parts['train']['per_class'][label]:,}", f"{parts['test']['per_class'][label]:,}")
        for label, name in enumerate(api.CLASS_NAMES)
    ]
    console.print(table("images per class", ("label", "class", "train", "test"), counts, left=2))
    console.print(f"wrote {summary['samples']}")
    return 0


def cmd_train(args) -> int:
    console.quiet = os.environ.get("RANK", "0") != "0"  # under torchrun only rank 0 speaks
    if args.resume:
        run_dir = Path(args.resume)
        console.print(f"resuming {run_dir}")
        run = api.train(out=run_dir, resume=True, show_progress=not args.quiet, epochs=args.epochs)
    else:
        run_dir, config = Path(args.out), train_config(args)
        api.check_new_run(run_dir)  # refused before the model summary, not after it
        print_layers(config.model)
        if quick := config.quick_settings():  # say so: these differ from the recipe `fmnist models` shows
            console.print(f"a quick try ({config.epochs * config.steps} steps): {config.model}'s {as_flags(quick)}")
        run = api.train(config, run_dir, show_progress=not args.quiet)
    if console.quiet:  # under torchrun, rank 0 reports (and only it has written the last epoch for sure)
        return 0
    best = min((row for row in run.history if row["val_loss"] is not None), key=lambda r: r["val_loss"], default=None)
    done = f"lowest val_loss {best['val_loss']:.4f} at epoch {best['epoch']}" if best else "nothing validated"
    console.print(f"done: {run_dir} ({done}); next: fmnist evaluate {run_dir}")
    return 0


def train_config(args) -> api.TrainConfig:
    """The model's recipe (TrainConfig.for_model), with the flags that were given on top."""
    try:
        return api.TrainConfig.for_model(args.model, seed=args.seed, **flags.settings_of(args))
    except ValueError as exc:
        raise errors.InputError(str(exc)) from None


def print_layers(model: str) -> None:
    rows, total = api.layer_table(model)
    layers = [(layer, shape, f"{count:,}") for layer, shape, count in rows]
    console.print(table(f"Model: {model}", ("Layer (type)", "Output Shape", "Param #"), layers, left=2))
    console.print(f"Total params: {total:,}")


def cmd_models(args) -> int:
    """The registry as a table; measured accuracy and time are in the docs, not here."""
    rows = api.models()
    cells = [
        (row["name"] + " (default)" * row["default"], f"{row['parameters']:,}", f"{row['mflops']:.2f}", row["recipe"])
        for row in rows
    ]
    console.print(table("models (fmnist train --model NAME)", ("name", "parameters", "MFLOPs/image", "recipe"), cells))
    for row in rows:
        quick = f"; in a quick try: {as_flags(row['quick'])}" if row["quick"] else ""
        console.print(f"{row['name']}: {row['description']} (weights tagged {row['architecture']}){quick}")
    for row in (row for row in rows if row["fp32"]):  # the speed tier's recipe depends on the machine: say which
        here = "its fp32 recipe ({}): this CPU has no native bf16" if row["recipe_here"] == "fp32" else ""
        here = here or "its own recipe, in bf16; on a CPU without native bf16: {}"
        console.print(f"{row['name']} on this machine: " + here.format(as_flags(row["fp32"])))
    return 0


def as_flags(settings: dict) -> str:
    return " ".join(f"--{key.replace('_', '-')} {value}" for key, value in settings.items())


def cmd_evaluate(args) -> int:
    run = api.open_run(args.run)
    with console.status("evaluating on the training split and the test set"):
        metrics = run.evaluate(args.weights, args.device, args.data_dir, args.precision)
    print_metrics(metrics)
    console.print(
        f"wrote {Path(args.run) / 'metrics.json'}, predictions.csv and figures/; next: fmnist report {args.run}"
    )
    return 0


def print_metrics(metrics: dict) -> None:
    test, train = metrics["test"], metrics["train"]
    overall = [
        (name, f"{m['count']:,}", f"{m['loss']:.4f}", f"{m['accuracy']:.4f}")
        for name, m in (("training split", train), ("test set", test))
    ]
    title = f"loss and accuracy, computed in {metrics.get('precision', 'fp32')}"
    console.print(table(title, ("data", "images", "loss", "accuracy"), overall))
    report = test["classification_report"]
    per_class = [
        (
            name,
            *(f"{report[name][key]:.2f}" for key in ("precision", "recall", "f1-score")),
            f"{int(report[name]['support']):,}",
        )
        for name in (*api.CLASS_NAMES, "macro avg", "weighted avg")
    ]
    console.print(table("test set, per class", ("class", "precision", "recall", "f1-score", "support"), per_class))
    published = f"{api.PUBLISHED['correct']:,} / {api.PUBLISHED['wrong']:,}"
    console.print(f"right: {test['correct']:,}  wrong: {test['wrong']:,}  (the report: {published})")


def cmd_report(args) -> int:
    html_path, md_path = api.open_run(args.run).report()
    console.print(f"wrote {html_path} and {md_path}")
    return 0


def cmd_reproduce(args) -> int:
    """The whole experiment (api.reproduce): the data summary once every setting is checked, each seed's metrics,
    the summaries, the comparison."""
    out, names = Path(args.out), list(dict.fromkeys(args.model or [api.DEFAULT_MODEL]))
    settings = flags.settings_of(args)
    if args.workers or args.address:
        settings["threads"] = settings["threads"] or 1  # per parallel seed

    def on_seed(name, seed, metrics, html_path):
        print_metrics(metrics)
        console.print(f"report: {html_path}")

    data = argparse.Namespace(data_dir=args.data_dir, out=out)  # `fmnist data`'s summary, once all is checked
    api.reproduce(
        names,
        args.seeds,
        out,
        first_seed=args.seed,
        show_progress=not args.quiet,
        on_seed=on_seed,
        workers=args.workers,
        address=args.address,
        targets=args.target or [],
        on_start=lambda: cmd_data(data),
        ensemble=args.ensemble,
        **settings,
    )
    for name in names:
        summary = (out / name if len(names) > 1 else out) / "summary.md"
        console.print(summary.read_text())
        console.print(f"summary: {summary}")
    if len(names) > 1:
        console.print((out / "comparison.md").read_text())
        console.print(f"comparison: {out / 'comparison.md'}")
    return 0


def cmd_sweep(args) -> int:
    """A sweep file and/or flags -> trials on Ray -> the summary, chosen on validation."""
    config = api.sweep_config(args.file, args.model, args.vary, args.set, args.seeds, args.search, args.samples)
    api.check_counts(workers=args.workers, threads=args.threads)
    count = len(config.configurations()) * config.seeds
    console.print(
        f"sweep of {config.model}: {len(config.configurations())} configurations x {config.seeds} seeds "
        f"= {count} trials, {args.threads} threads each, into {args.out}"
    )
    _, paths = api.sweep(config, args.out, args.threads, args.workers, args.address, 0 if args.quiet else 1)
    console.print(next(path for path in paths if path.suffix == ".md").read_text())
    console.print(f"wrote {', '.join(str(path) for path in paths)}")
    return 0


def cmd_bench(args) -> int:
    with console.status("timing training steps, an epoch and evaluation"):
        result = api.bench(args.model, args.quick, args.device, args.threads, args.batch_size, args.precision, args.out)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    m = result["machine"]
    console.print(
        f"machine: {m['device_name']} ({m['device']}, {m['threads']} threads), torch {m['torch']}; "
        f"{result['model']} in {result['precision']}"
    )
    baseline = result["step_seconds"]["plain eager PyTorch"]
    console.print(
        table(
            f"training step, batch {result['batch_size']} (median of interleaved rounds)",
            ("implementation", "ms/step", "samples/s", "speed-up"),
            (
                (name, f"{1000 * seconds:.2f}", f"{result['batch_size'] / seconds:,.0f}", f"{baseline / seconds:.2f}x")
                for name, seconds in result["step_seconds"].items()
            ),
        )
    )
    console.print(
        f"the step's convolutions and matrix products alone (the floor under any step here): "
        f"{1000 * result['floor_seconds']:.2f} ms; fmnist's step is "
        f"{result['step_seconds']['fmnist'] / result['floor_seconds']:.2f}x its floor"
    )
    rates = ", ".join(f"{rate:,.0f} images/s in {name}" for name, rate in result["eval_images_per_second"].items())
    console.print(
        f"one epoch of {result['epoch_images']:,} images: {result['epoch_seconds']:.2f} s "
        f"+ validation {result['validation_seconds']:.2f} s; evaluation: {rates}"
    )
    console.print(f"record: {result['record']}")
    return 0


def cmd_predict(args) -> int:
    """Top classes per file; a bad file is reported in one line and the others are still predicted."""
    images = args.paths if args.pretrained else args.paths[1:]
    if not images:
        raise errors.InputError("give a run directory and then images, or --pretrained and images")
    run = api.pretrained() if args.pretrained else api.open_run(args.paths[0])
    results = run.predict_files(images, args.top, args.weights, args.save_preprocessed, args.precision)
    for result in results:
        if "error" in result:
            report_error(result["error"], 1)
        elif not args.json:
            ranked = ", ".join(f"{t['class']} {t['probability']:.1%}" for t in result["top"])
            console.print(f"{result['file']}: {ranked}", soft_wrap=True)
            if "warning" in result:
                show_warning(f"{result['file']}: {result['warning']}", UserWarning, "", 0)
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if any("error" in result for result in results) else 0


def cmd_export(args) -> int:
    run = api.open_run(args.run)
    path = run.export(args.format, args.out, args.weights, verify=False)
    console.print(f"wrote {path}")
    if args.format == "onnx" and not args.no_verify:
        difference = run.verify_onnx(path, args.weights, args.data_dir)
        console.print(f"checked: onnxruntime vs PyTorch on 1,000 test images, max abs difference {difference:.1e}")
    elif args.format == "keras":
        console.print("load it with keras.saving.load_model (Keras 3); fmnist import-keras reads it back")
    return 0


def cmd_ensemble(args) -> int:
    run = api.ensemble(args.members, args.out, args.combine)
    about = run.ensemble or {}
    chosen = f"{about['combine']} averaged ({about['chosen']})"
    console.print(f"wrote {run.path}: {len(about['members'])} members, {chosen}; next: fmnist evaluate {run.path}")
    return 0


def cmd_import_keras(args) -> int:
    run = api.import_keras(args.model, args.out)
    console.print(f"imported {args.model} into {run.path}; next: fmnist evaluate {run.path}")
    return 0


def cmd_serve(args) -> int:
    from fmnist.serving import limits

    args.max_bytes = args.max_bytes or limits.MAX_BYTES
    if bool(args.run) == args.pretrained:
        raise errors.InputError("give a run directory to serve, or --pretrained (not both)")
    args.run = args.run or api.pretrained().path
    if args.replicas is not None or args.address:
        return serve_on_ray(args)
    from fmnist.serving import server, transport

    sock = transport.listening_socket(args.host, args.port)  # a taken port fails here, before the model loads
    port = sock.getsockname()[1]  # --port 0: the free port the system chose
    console.print(f"serving {args.run} in {args.precision} on http://{args.host}:{port}/ (Ctrl-C stops)")
    server.serve(Path(args.run), sock, **serving_options(args))
    return 0


def serving_options(args) -> dict:
    """What both servers (uvicorn here, Ray Serve's replicas) take from the flags."""
    given = {"max_bytes": args.max_bytes, "allowed_hosts": args.allowed_host, "precision": args.precision}
    return {**given, "request_timeout": args.request_timeout}


def serve_on_ray(args) -> int:
    """Deploy on Ray Serve, then wait for Ctrl-C (or SIGTERM), which shuts the deployment down."""
    from fmnist.serving import on_ray

    replicas = 1 if args.replicas is None else args.replicas
    on_ray.deploy(Path(args.run), replicas, args.host, args.port, args.address, **serving_options(args))
    console.print(
        f"serving {args.run} on http://{args.host}:{args.port}/ with {replicas} Ray Serve "
        f"replica{'s' * (replicas > 1)} (Ctrl-C stops)"
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    on_ray.shutdown()
    return 0


# ---------------------------------------------------------------------------------------------
HANDLERS = {name.removeprefix("cmd_"): handler for name, handler in list(globals().items()) if name.startswith("cmd_")}
WITHOUT_TORCH = ("data",)  # commands that compute nothing with torch: no machine set-up


def main(argv: list[str] | None = None) -> int:
    parser = flags.build_parser(HANDLERS)
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    with warnings.catch_warnings():  # put back as it was: main() also runs inside other programs (tests)
        warnings.showwarning = show_warning
        previous = stop_on_sigterm()
        try:
            return run_command(args)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def stop_on_sigterm():
    """SIGTERM raises errors.Terminated where the main thread is, so that training, reproduce and the rest stop
    as they do on Ctrl-C (exit 143). Returns the handler it replaced (None off the main thread: untouched)."""

    def terminated(signum, frame):
        raise errors.Terminated

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, terminated)


def check_extras(args) -> None:
    """A command's missing extra (errors.EXTRAS) refused before the machine set-up, which imports torch (~3 s)."""
    ray = ["ray"] * any(getattr(args, flag, None) not in (None, 0) for flag in ("workers", "address", "replicas"))
    needs = {"serve": ["serve", *ray], "sweep": ["ray"], "reproduce": ray, "import-keras": ["keras"]}
    for extra in needs.get(args.command, [getattr(args, "format", "")] if args.command == "export" else []):
        errors.require(f"fmnist {args.command}{' on Ray' * (extra == 'ray')}", extra)  # export: onnx or keras


def run_command(args) -> int:
    try:
        check_extras(args)
        if args.command not in WITHOUT_TORCH:
            with console.status("preparing the CPU kernels (compiled on first use, then cached)"):
                api.prepare(getattr(args, "threads", None))
        return args.handler(args)
    except errors.FmnistError as exc:
        return report_error(str(exc), getattr(exc, "exit_code", 2))
    except KeyboardInterrupt as stop:  # before or after training (training's own Ctrl-C says how to resume)
        said = "terminated" if isinstance(stop, errors.Terminated) else "interrupted"
        return report_error(said, getattr(stop, "exit_code", errors.Interrupted.exit_code))
    except OSError as exc:  # the machine's side: disk full, permissions, a path of the wrong kind
        return report_error(f"{f'{exc.filename}: ' if exc.filename else ''}{exc.strerror or exc}", 2)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line on stderr (not Python's file:line and source), fmnist's own without its prefix."""
    text = str(message).removeprefix("fmnist: ")
    error_console.print(f"[yellow]warning:[/] {rich.markup.escape(text)}", soft_wrap=True)


def report_error(message: str, exit_code: int) -> int:
    error_console.print(f"[bold red]error:[/] {rich.markup.escape(message)}", soft_wrap=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
