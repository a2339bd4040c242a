"""Seed studies and recipe sweeps on Ray Tune, each trial an ordinary run directory.

A sweep is a model, a search space over its recipe's settings (grid: every combination; random: N draws
with a fixed seed), and seeds. Trials run in parallel on a local Ray instance (as many at once as the
CPUs allow at --threads each) or on a cluster (`address`). Tune keeps the experiment's state in
OUT/tune, so an interrupted sweep (Ctrl-C, a lost worker) resumes with Tuner.restore: finished trials
are kept, unfinished ones continue from their run directory's checkpoint. The summary pools seeds per
configuration, chooses on validation accuracy, and only then evaluates the chosen runs on the test set.

    OUT/
      trial-<configuration>-seed<seed>/   one run directory per trial (runs.py)
      tune/                               Ray Tune's experiment state (what resuming reads)
      summary.json, summary.md, summary.html, summary.png
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import random
import re
import tomllib
import typing
from pathlib import Path

from fmnist import runs
from fmnist.core import errors, files, threads
from fmnist.results import compare
from fmnist.training import configs, loop, registry

SEARCHES = ("grid", "random")
FIXED_BY_TRIAL = ("seed", "threads", "model")  # set by the sweep itself, not by the space
FIELDS = {f.name: f for f in dataclasses.fields(configs.TrainConfig)}
MAX_TRIALS = 10_000  # a sweep file's space is enumerated only below this


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """What to try: settings -> values (the space), settings held fixed, seeds, and how to search."""

    model: str = registry.DEFAULT
    space: dict = dataclasses.field(default_factory=dict)
    fixed: dict = dataclasses.field(default_factory=dict)
    seeds: int = 1
    search: str = "grid"
    samples: int = 8  # random search: configurations drawn

    def __post_init__(self):
        registry.get(self.model)
        if self.search not in SEARCHES:
            raise ValueError(f"search must be grid or random, got {self.search!r}")
        for what, value in (("seeds", self.seeds), ("samples", self.samples)):
            if value < 1:
                raise ValueError(f"{what} must be >= 1, got {value}")
        for name, values in self.space.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"{name}: give a non-empty list of values")
        for name in [*self.space, *self.fixed]:
            if name in FIXED_BY_TRIAL or name not in FIELDS:
                raise ValueError(
                    f"{name!r} is not a recipe setting a sweep can vary "
                    f"(settings: {', '.join(sorted(set(FIELDS) - set(FIXED_BY_TRIAL)))})"
                )
        both = sorted(set(self.space) & set(self.fixed))
        if both:
            raise ValueError(f"{', '.join(both)}: both varied and held fixed; give each setting once")
        combinations = math.prod(len(values) for values in self.space.values())
        if combinations * self.seeds > MAX_TRIALS:  # before anything is enumerated
            raise ValueError(f"{combinations:,} configurations x {self.seeds} seeds: over {MAX_TRIALS:,} trials")
        for name, values in self.space.items():  # each value's type and range, by TrainConfig's own checks
            for value in values:
                configs.TrainConfig.for_model(self.model, **self.fixed, **{name: value})
        if 0 in [self.fixed.get("validation_fraction"), *self.space.get("validation_fraction", [])]:
            raise ValueError(
                "validation_fraction 0 holds nothing out, and a sweep chooses on validation: "
                "give a fraction above 0 (the final fit on every image comes after the sweep)"
            )

    def configurations(self) -> list[dict]:
        """The settings each configuration varies, in a fixed order (the same on every run of the sweep)."""
        names = sorted(self.space)
        grid = [dict(zip(names, values)) for values in itertools.product(*(self.space[n] for n in names))]
        if self.search == "grid" or self.samples >= len(grid):
            return grid
        return random.Random(0).sample(grid, self.samples)


def configure(
    file: str | Path | None = None,
    model: str | None = None,
    vary: list[str] | None = None,
    fixed: list[str] | None = None,
    seeds: int | None = None,
    search: str | None = None,
    samples: int | None = None,
) -> SweepConfig:
    """A sweep's configuration from a sweep file (TOML) and NAME=V1,V2 / NAME=V flags on top of it."""
    loaded = load_file(Path(file)) if file else {}
    try:
        return SweepConfig(
            model=model or loaded.get("model", configs.Recipe().model),
            space={**loaded.get("space", {}), **parse_assignments(vary, several=True)},
            fixed={**loaded.get("fixed", {}), **parse_assignments(fixed, several=False)},
            seeds=loaded.get("seeds", 1) if seeds is None else seeds,
            search=search or loaded.get("search", "grid"),
            samples=loaded.get("samples", 8) if samples is None else samples,
        )
    except (TypeError, ValueError) as exc:
        raise errors.InputError(f"sweep: {exc}") from None


def parse_value(name: str, text: str):
    """A flag's text as the TrainConfig field's type (int, float, bool or str)."""
    if name not in FIELDS:
        raise ValueError(f"{name!r} is not a training setting")
    kinds = typing.get_args(typing.get_type_hints(configs.TrainConfig)[name]) or (
        typing.get_type_hints(configs.TrainConfig)[name],
    )
    if bool in kinds:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{name} takes true or false, got {text!r}")
        return text.lower() in ("true", "1")
    for kind in (int, float, str):
        if kind in kinds:
            try:
                return kind(text)
            except ValueError:
                continue
    raise ValueError(f"{name}: {text!r} is not a {' or '.join(k.__name__ for k in kinds)}")


def parse_assignments(items: list[str] | None, several: bool) -> dict:
    """NAME=V1,V2 flags (names with - or _) as {name: [values]} (or {name: value} when not `several`)."""
    parsed = {}
    for item in items or []:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not values:
            raise ValueError(f"{item!r}: write NAME=VALUE" + ("[,VALUE...]" if several else ""))
        texts = values.split(",") if several else [values]
        parsed[name] = [parse_value(name, t.strip()) for t in texts] if several else parse_value(name, texts[0])
    return parsed


MAX_FILE_BYTES = 64 << 10  # a sweep file is a few lines


def load_file(path: Path) -> dict:
    """A sweep file (TOML): model, seeds, search, samples, [space] name = [values], [fixed] name = value."""

    text = files.read_regular(Path(path), MAX_FILE_BYTES).decode("utf-8", errors="replace")
    try:
        loaded = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise errors.InputError(f"{path}: not valid TOML ({exc})") from None
    known = {"model", "seeds", "search", "samples", "space", "fixed"}
    if set(loaded) - known:
        raise errors.InputError(f"{path}: unknown keys {sorted(set(loaded) - known)} (known: {sorted(known)})")
    return loaded


# ---------------------------------------------------------------------------------------------
# Trials
def trial_name(configuration: dict, seed: int) -> str:
    """A directory name that says what the trial is: trial-learning_rate=0.05,shift=1-seed0."""
    return f"trial-{compare.configuration_label(configuration)}-seed{seed}"


@dataclasses.dataclass(frozen=True)
class Trial:
    """One run of a sweep (or one of reproduce's seeds): the model's recipe with `settings` on top."""

    model: str
    settings: dict  # recipe settings over the model's recipe: the fixed ones and the configuration
    configuration: dict  # the settings this trial varies (they name it and group it with its other seeds)
    seed: int
    threads: int
    run_dir: str  # absolute: the trial's whole state (runs.py)
    evaluate_and_report: bool = False  # reproduce's seeds are all tested: in the worker, so in parallel too

    def train_config(self) -> configs.TrainConfig:
        return configs.TrainConfig.for_model(self.model, seed=self.seed, threads=self.threads, **self.settings)


def trials(sweep: SweepConfig, out: Path, threads_per_trial: int) -> list[Trial]:
    return [
        Trial(
            sweep.model,
            {**sweep.fixed, **configuration},
            configuration,
            seed,
            threads_per_trial,
            str((out / trial_name(configuration, seed)).resolve()),
        )
        for configuration in sweep.configurations()
        for seed in range(sweep.seeds)
    ]


def run_trial(trial: Trial, on_epoch=None) -> dict:
    """One trial in a Ray worker (or in this process): train or continue its run (and evaluate and report
    it, where asked); its validation figures. `on_epoch`: called with each epoch's history row.

    The run directory is the trial's whole state: a trial that was cut off resumes from its checkpoint,
    a finished one is only read. (A fresh Ray worker imports this module, so `import fmnist` has set
    OpenMP's waiting and MKL's reproducible mode before torch loads.)"""
    run_dir = Path(trial.run_dir)
    history = loop.fit_unless_finished(trial.train_config(), run_dir, on_epoch=on_epoch)
    if trial.evaluate_and_report:
        from fmnist.results import evaluate, report

        evaluate.evaluate_run(run_dir)
        report.write_report(run_dir)
    return {
        "val_accuracy": history[-1]["val_accuracy"],
        "val_loss": history[-1]["val_loss"],
        "seconds": runs.elapsed(history)[-1],
        "node": node_id(),
    }


def node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    except ImportError:
        return "local"


def default_workers(threads_per_trial: int) -> int:
    available, _ = threads.available_cpus()
    return max(1, available // threads_per_trial)


# ---------------------------------------------------------------------------------------------
# The driver
def require_ray():
    errors.require("Runs on Ray (fmnist sweep, reproduce --workers)", "ray")


def run(
    sweep: SweepConfig,
    out: Path,
    threads_per_trial: int = 1,
    workers: int | None = None,
    address: str | None = None,
    verbose: int = 1,
) -> list[dict]:
    """Every trial of the sweep (resuming an interrupted one in OUT/tune); one result per trial, in trial order."""
    out = Path(out).resolve()
    return run_trials(trials(sweep, out, threads_per_trial), out, threads_per_trial, workers, address, verbose)


def train_seeds(seed_configs: list[configs.TrainConfig], out: Path, workers: int | None, address: str | None) -> None:
    """Seeds of one model (reproduce --workers) as trials, each trained, evaluated and reported in its worker:
    run directories out/seed-N, Tune's state in out/tune."""
    per_trial = seed_configs[0].threads or 1
    todo = [
        Trial(
            c.model,
            {k: v for k, v in dataclasses.asdict(c).items() if k not in FIXED_BY_TRIAL},
            {},
            c.seed,
            per_trial,
            str((out / f"seed-{c.seed}").resolve()),
            evaluate_and_report=True,
        )
        for c in seed_configs
    ]
    run_trials(todo, out.resolve(), per_trial, workers, address)


def run_trials(
    todo: list[Trial],
    out: Path,
    threads_per_trial: int = 1,
    workers: int | None = None,
    address: str | None = None,
    verbose: int = 1,
) -> list[dict]:
    """Trials on Ray Tune, one result per trial (its fields and its figures); Tune's state in OUT/tune."""
    require_ray()
    import ray
    from ray import tune

    out.mkdir(parents=True, exist_ok=True)
    workers = workers or default_workers(threads_per_trial)
    if not ray.is_initialized():
        # A local instance sized to what this process may use; a cluster brings its own resources.
        ray.init(
            address=address,
            num_cpus=None if address else workers * threads_per_trial,
            include_dashboard=False,
            log_to_driver=verbose > 1,
            configure_logging=False,
        )
    trainable = tune.with_resources(run_trial_for_tune, {"cpu": threads_per_trial})
    path = out / "tune"
    if tune.Tuner.can_restore(str(path)):  # an interrupted sweep: finished trials are kept
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(todo)},
            # reuse_actors: a worker process trains trial after trial (torch loads once)
            tune_config=tune.TuneConfig(max_concurrent_trials=workers, reuse_actors=True),
            run_config=tune.RunConfig(name="tune", storage_path=str(out), verbose=verbose),
        )
    with without_tunes_restore_hint():
        grid = tuner.fit()
    return collect(grid, todo)


class TunesRestoreHint(logging.Filter):
    """After Ctrl-C, Tune logs its own advice ("Resume experiment with: Tuner.restore(...)"): not how fmnist
    continues. The command's last line says how (`collect`: run the same command again)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


@contextlib.contextmanager
def without_tunes_restore_hint():
    tunes = logging.getLogger("ray.tune.tune")  # the module that logs the hint
    hint = TunesRestoreHint()
    tunes.addFilter(hint)
    try:
        yield
    finally:
        tunes.removeFilter(hint)


def collect(grid, todo: list[Trial]) -> list[dict]:
    """One result per trial (its fields and its figures), in trial order; a one-line error saying how to
    continue where any trial did not finish (Ctrl-C or a failed trial: Tune returns, it does not raise)."""
    finished = {
        result.config["trial"].run_dir: result.metrics
        for result in grid
        if result.config and (result.metrics or {}).get(FINISHED)
    }  # a cut-off trial: an epoch's report
    missing = [trial.run_dir for trial in todo if trial.run_dir not in finished]
    if missing:
        failures = [str(result.error).strip().splitlines()[-1:] for result in grid if result.error is not None]
        said = f"{len(missing)} of {len(todo)} trials did not finish (first: {missing[0]})"
        if failures:  # its exception's last line, without the exception's type: the message says it all
            cause = re.sub(r"^[\w.]+: ", "", (failures[0] or ["?"])[0]).rstrip(".")
            raise errors.FmnistError(
                f"{said}; a trial failed: {cause}. Fix that, then run the same command again (finished trials are kept)"
            )
        raise errors.Interrupted(
            f"interrupted: {said}; run the same command again to continue: finished trials "
            f"are kept, cut-off ones continue from their last checkpoint"
        )
    return [
        {
            **dataclasses.asdict(t),
            **{k: finished[t.run_dir][k] for k in ("val_accuracy", "val_loss", "seconds", "node")},
        }
        for t in todo
    ]


FINISHED = "finished"  # in a trial's last result only: the epochs' reports carry no figures


def run_trial_for_tune(config: dict) -> dict:
    """run_trial, telling Tune of each epoch. Why: a worker serves Tune's requests between its reports, so
    a trial that reported only at its end held a Ctrl-C for Tune's whole grace period (10 s, measured)
    before its worker was killed; now a stop waits for the epoch under way at most."""
    from ray import tune

    return {**run_trial(config["trial"], on_epoch=lambda row: tune.report({"epoch": row["epoch"]})), FINISHED: True}


def run_sequentially(sweep: SweepConfig, out: Path, threads_per_trial: int = 1) -> list[dict]:
    """The same trials one after another in this process, without Ray (the reference a sweep must equal)."""
    return [{**dataclasses.asdict(t), **run_trial(t)} for t in trials(sweep, Path(out).resolve(), threads_per_trial)]
