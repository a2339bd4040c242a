"""Every benchmark in its --quick form, in this process: it runs to the end and writes a record the results
pages could read (so none rots between the sittings that publish its figures)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from fmnist.nets import architectures
from fmnist.results import records
from fmnist.training import registry
from tests.helpers import require_real_data

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# the arguments each needs beyond --quick: RUN a trained run, RUNS a folder for its run directories
NEEDS = {
    "ablation": ["--runs", "RUNS"],
    "compare_keras": [],
    "contention": [],
    "distill_choice": ["RUN"],
    "ensemble": ["RUN", "RUN"],
    "hostile_images": [],
    "inference_speed": ["RUN"],
    "norm_blocks": [],
    "pool_before_norm": ["--runs", "RUNS"],
    "profile_step": [],
    "quick_tries": [],
    "recipe_frontier": ["--runs", "RUNS"],
    "serve_load": ["RUN"],
    "shuffle_augment": [],
    "step_without_norm": [],
    "suite_time": [],
}


def test_every_benchmark_is_tested():
    assert sorted(path.stem for path in BENCHMARKS.glob("*.py")) == sorted(NEEDS)


# quick forms that still train thousands of images, time a machine under load or run pytest: the slow tier's
SLOW = {"ablation", "contention", "distill_choice", "pool_before_norm", "recipe_frontier", "serve_load", "suite_time"}


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in sorted(NEEDS)]
)
def test_quick_form_writes_a_record(name, tmp_path, monkeypatch, request):
    # a benchmark may register an experiment's network and model: this process's registries are put back after
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    monkeypatch.setattr(architectures, "ARCHITECTURES", dict(architectures.ARCHITECTURES))
    arguments = []
    for argument in NEEDS[name]:
        if argument == "RUN":
            arguments.append(str(request.getfixturevalue("trained_run")))
        elif argument == "RUNS":
            require_real_data()
            arguments.append(str(tmp_path / "runs"))
        else:
            arguments.append(argument)
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    out = tmp_path / f"{name}.json"
    returned = module.main(["--quick", "--threads", "1", "--out", str(out), *arguments])

    written = records.check(json.loads(out.read_text()), str(out))
    assert written == json.loads(json.dumps(returned))  # what it returned is what it wrote
    assert written["figures"] and written["rows"] and written["machine"]["cores"]
    assert any("--quick" in note for note in written["notes"])  # never mistaken for a measurement
