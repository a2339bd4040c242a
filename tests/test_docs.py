"""The front door and the documentation: the README's size and its two commands, the records every published
figure comes from, the generated pages (regenerated from the records and the code, unchanged), and the site
built with `mkdocs build --strict` (a broken link or a missing reference fails)."""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fmnist.results import records

ROOT = Path(__file__).resolve().parent.parent
RECORDS = sorted((ROOT / "results").rglob("*.json"))
HOOKS = runpy.run_path(str(ROOT / "docs" / "hooks.py"))


def test_the_readme_is_a_front_door_with_the_two_commands_ci_runs():
    text = (ROOT / "README.md").read_text()
    assert text.count("\n") <= 150
    lines = text.splitlines()
    install = lines[
        lines.index("# 1. install, then run the whole report: data check, 50-epoch training, evaluation, HTML report")
        + 1
    ]
    tests = lines[lines.index("# 2. install the test extras and run the whole test suite") + 1]
    assert install.endswith("fmnist reproduce") and tests.endswith("python -m pytest -q")
    assert "../shared" not in text and "sitting" not in text  # no path outside the repository, no lab notes


@pytest.mark.parametrize("path", RECORDS, ids=lambda path: str(path.relative_to(ROOT / "results")))
def test_every_record_is_whole_and_names_its_machine_and_commit(path):
    record = records.check(json.loads(path.read_text()), str(path))
    assert record["subject"] in HOOKS["SUBJECTS"] and path.parent.name in HOOKS["KINDS"]
    assert record["machine"].get("description") or record["machine"].get("cpu")
    assert record.get("commit") or record.get("published_at"), "a record says which code measured it"
    assert record["figures"] or record.get("rows"), "a record holds figures"


def test_a_record_made_here_describes_this_machine(tmp_path):
    made = records.record(
        "speed", "a test", {"images_per_second": 1.0}, ["a", "b"], [["1", "2"]], command="fmnist bench --quick"
    )
    path = records.write(tmp_path, made)
    back = records.check(json.loads(path.read_text()), str(path))
    machine = back["machine"]
    assert path.name == "record.json" and back["command"] == "fmnist bench --quick"
    assert machine["cores"] >= 1 and machine["kind"] and machine["libraries"]["torch"]
    assert set(machine["flags"]) <= set(records.FLAGS)
    with pytest.raises(ValueError, match="a row and the columns differ in length"):
        records.check({**back, "rows": [["1"]]})


def test_the_harness_interleaves_rounds():
    calls = []
    samples = records.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # a warm-up each, then the rounds, the variants in turn
    assert set(samples) == {"a", "b"} and all(len(values) == 3 for values in samples.values())
    assert records.spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "rounds": 3}


def test_the_generated_pages_are_up_to_date():
    """Results pages and the README's table from the records, the CLI reference from the parser, the models, the
    layers and the limits from the code: regenerated, they must equal what is committed."""
    stale = HOOKS["out_of_date"]()
    assert not stale, f"out of date (run python docs/hooks.py): {[str(path.relative_to(ROOT)) for path in stale]}"


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    assert mkdocs, "mkdocs is not installed: the test extras bring it (pip install -e '.[test]')"
    result = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for page in ("api", "cli", "notebook", "results/speed-tier", "models"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page
    assert "fmnist.api.train" in (tmp_path / "site" / "api" / "index.html").read_text()  # the docstrings, rendered
