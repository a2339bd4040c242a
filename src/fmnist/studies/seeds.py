"""Seeds of one or more models, as the report's experiment runs them (`fmnist reproduce`): each seed trained
(watched; finished runs kept, cut-off ones continued), evaluated and reported, in this process or as trials on
Ray; a summary over seeds per model (summary.md, summary.json) and, with several models, a comparison."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from fmnist import runs
from fmnist.core import errors, files, progress
from fmnist.results import compare, evaluate, records, report
from fmnist.training import ensembles, watch
from fmnist.training.configs import TrainConfig

HEADLINE_SEEDS = 5  # a comparison of models is a headline claim: a mean over five runs, as airbench reports
OnSeed = Callable[[str, int, dict, Path], None]  # (model, seed, metrics, report.html) after each seed


@dataclasses.dataclass(frozen=True)
class Plan:
    """A study checked before anything runs: every model's settings per seed, the validation accuracies whose
    time to reach the summary states, and where the seeds train (Ray workers or this process)."""

    models: list[str]
    configs: dict[tuple[str, int], TrainConfig]
    targets: list[float]
    workers: int | None = None
    address: str | None = None
    ensemble: bool = False  # also each model's seeds averaged as one model

    def seed_configs(self, model: str) -> list[TrainConfig]:
        return [config for (name, _), config in self.configs.items() if name == model]


def plan(
    model_names: Iterable[str],
    seeds: int | None = None,
    first_seed: int = 0,
    targets: Iterable[float] = (),
    workers: int | None = None,
    address: str | None = None,
    ensemble: bool = False,
    **settings,
) -> Plan:
    """`seeds` default to one for one model (the report's reproduction), HEADLINE_SEEDS for a comparison; a
    wrong setting, count or target is one InputError, before hours of training."""
    names = list(dict.fromkeys(model_names))
    check_counts(seeds=seeds, workers=workers)
    seeds = seeds or (1 if len(names) == 1 else HEADLINE_SEEDS)
    if ensemble and seeds < 2:
        raise errors.InputError("--ensemble averages seeds: give --seeds 2 or more")
    if any(not 0 < target < 1 for target in targets):
        raise errors.InputError(f"a target is a validation accuracy in (0, 1), got {list(targets)}")
    try:
        chosen = {
            (name, seed): TrainConfig.for_model(name, seed=seed, **settings)
            for name in names
            for seed in range(first_seed, first_seed + seeds)
        }
    except (TypeError, ValueError) as exc:
        raise errors.InputError(str(exc)) from None
    return Plan(names, chosen, sorted(set(report.TIME_TO) | set(targets)), workers, address, ensemble)


def check_counts(**counts: int | None) -> None:
    """Seeds, runs at once, threads per run, where given, are counts: 0 is refused, not taken for the default."""
    for flag, value in counts.items():
        if value is not None and value < 1:
            raise errors.InputError(f"--{flag} must be 1 or more, got {value}")


def reproduce(study: Plan, out: Path, show_progress: bool = True, on_seed: OnSeed | None = None) -> dict:
    """Every model's seeds trained, evaluated and reported; a summary over seeds per model (time to each of the
    plan's validation accuracies) and with several models a comparison (comparison.md). Returns the summaries."""
    summaries, curves = {}, {}
    for name in study.models:
        model_out = out / name if len(study.models) > 1 else out
        results, histories = reproduce_model(study, name, model_out, show_progress, on_seed)
        summaries[name] = report.seed_summary(results, histories, study.targets)
        if study.ensemble:
            summaries[name]["ensemble"] = ensemble_of_seeds(study, name, model_out)
        curves[name] = list(histories.values())
        files.write_json(model_out / "summary.json", summaries[name])
        files.write_text(model_out / "summary.md", report.summary_markdown(summaries[name]))
    if len(study.models) > 1:
        compare.write_comparison(summaries, curves, out, next(iter(study.configs.values())).device)
    records.write(out / "record.json", study_record(study, summaries))
    return summaries


SUBJECTS = {"seed-cnn": "report", "fast-cnn": "speed-tier", "cnn94": "speed-tier"}  # else the accuracy tier's


def study_record(study: Plan, summaries: dict) -> dict:
    """The study as a record (results/records.py): per model, test accuracy and training seconds over seeds,
    final weights; the per-seed figures behind them."""
    rows = []
    for name, summary in summaries.items():
        accuracy, seconds = summary["stats"]["test_accuracy"], summary["stats"]["seconds"]
        spread = [records.mean_sd(stat["mean"], stat["std"], digits) for stat, digits in ((accuracy, 4), (seconds, 0))]
        rows.append([name, len(summary["seeds"]), *spread])
        if "ensemble" in summary:
            together, label = summary["ensemble"], f"{name}: the seeds as one ensemble"
            seconds = f"{together['training_seconds']:.0f} (its members')"
            rows.append([label, together["members"], f"{together['test_accuracy']:.4f}", seconds])
    first = study.models[0]
    return records.record(
        SUBJECTS.get(first, "accuracy-tier") if len(study.models) == 1 else "accuracy-tier",
        f"{', '.join(study.models)}: test accuracy (final weights) and training time over seeds",
        {name: {key: s[key] for key in ("stats", "seeds", "ensemble") if key in s} for name, s in summaries.items()},
        ["model", "seeds", "test accuracy", "training seconds"],
        rows,
        command=command_of(study),
    )


def command_of(study: Plan) -> str:
    """The `fmnist reproduce` command line that runs this study (settings that differ from the first model's
    recipe and fmnist's runtime defaults as flags)."""
    configs = study.seed_configs(study.models[0])
    seeds = sorted(config.seed for config in configs)
    default = dataclasses.asdict(TrainConfig.for_model(study.models[0], seed=seeds[0]))
    words = ["fmnist reproduce", *(f"--model {name}" for name in study.models), f"--seeds {len(seeds)}"]
    words += [f"--seed {seeds[0]}"] if seeds[0] else []
    words += [f"--target {target}" for target in study.targets if target not in report.TIME_TO]
    for name, value in dataclasses.asdict(configs[0]).items():
        flag = "--" + name.replace("_", "-")
        if value != default[name]:
            words.append(flag if value is True else f"--no-{flag[2:]}" if value is False else f"{flag} {value}")
    words += [f"--workers {study.workers}"] if study.workers else []
    words += ["--ensemble"] if study.ensemble else []
    return " ".join(words)


def reproduce_model(study: Plan, name: str, out: Path, show_progress: bool, on_seed: OnSeed | None):
    """One model's seeds (on Ray with workers or an address: each trained, evaluated and reported in its worker),
    evaluated and reported: (metrics, history) per seed."""
    parallel = bool(study.workers or study.address)
    if parallel:
        from fmnist.studies import sweeps

        sweeps.train_seeds(study.seed_configs(name), out, study.workers, study.address)
    results, histories = {}, {}
    for config in study.seed_configs(name):
        run_dir = train_seed(config, out / f"seed-{config.seed}", show_progress)
        if parallel:
            results[config.seed], html_path = evaluate.load_metrics(run_dir), run_dir / runs.REPORT_HTML
        else:
            results[config.seed] = evaluate.evaluate_run(run_dir, device=config.device)
            html_path, _ = report.write_report(run_dir)
        histories[config.seed] = runs.read_history(run_dir)
        if on_seed is not None:
            on_seed(config.model, config.seed, results[config.seed], html_path)
    return results, histories


def ensemble_of_seeds(study: Plan, name: str, out: Path) -> dict:
    """The model's seeds averaged as one model in OUT/ensemble (training/ensembles.py; made again where its
    members are not these seeds), evaluated: its test figures and its members' training time in all."""
    members = [out / f"seed-{config.seed}" for config in study.seed_configs(name)]
    target = out / "ensemble"
    if runs.holds_run(target):
        made_of = [member.get("run") for member in runs.read_config(target).get("ensemble", {}).get("members", [])]
        if made_of != [member.name for member in members]:
            shutil.rmtree(target)
    if not runs.holds_run(target):
        ensembles.make(members, target)
    metrics = evaluate.evaluate_run(target, device=study.seed_configs(name)[0].device)
    about = runs.read_config(target)["ensemble"]
    return {
        "members": len(members),
        "combine": about["combine"],
        "test_accuracy": metrics["test"]["accuracy"],
        "test_loss": metrics["test"]["loss"],
        "training_seconds": about["training_seconds"],
    }


def train_seed(config: TrainConfig, run_dir: Path, show_progress: bool) -> Path:
    progress.console.rule(f"{config.model}, seed {config.seed}: {run_dir}")
    if len(runs.read_history(run_dir)) < config.epochs:  # finished: no bar for epochs that are not trained
        watch.fit(config, run_dir, resume=None, show_progress=show_progress)
    return run_dir
