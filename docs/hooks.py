"""The documentation's generated parts, written from the code and the records so that each fact is written once.

- the results pages (docs/results/*.md) and the README's headline table, from the records under results/;
- the CLI reference (docs/cli.md), from the parser itself;
- blocks inside hand-written pages (`<!-- generated:NAME -->` ... `<!-- /generated -->`): the run directory's
  layout (runs.py), the models (the registry), the layers (each layer's docstring), the limits, the report's
  network and figures (data/seed_report.py);
- docs/notebook.ipynb, a copy of notebooks/fashion_mnist.ipynb for mkdocs-jupyter;
- the pretrained model's card (src/fmnist/pretrained/MODEL/README.md), from its record, its run and the registry.

MkDocs runs it before each build (mkdocs.yml: hooks); `python docs/hooks.py` writes everything, and
`python docs/hooks.py --check` says what is out of date (the suite runs it) without writing.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS, RESULTS = ROOT / "docs", ROOT / "results"
BLOCK = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.S)
KINDS = {
    "sapphire-rapids": "Intel Sapphire Rapids (AVX-512, AVX512-BF16, AMX)",
    "zen5": "AMD Zen 5 (AVX-512, AVX512-BF16)",
    "zen4": "AMD Zen 4 (AVX-512, AVX512-BF16)",
    "zen3": "AMD Zen 3 (AVX2 only)",
    "unknown": "machine not recorded",
}
SUBJECTS = {  # page: (title, what it is about, how to reproduce)
    "report": (
        "Reproducing the report",
        "The report's network and training, seed by seed, against the original report's figures.",
        "fmnist reproduce --seeds 3",
    ),
    "quick-tries": (
        "Quick tries",
        "One epoch on 6,000 images, a user's first minute: every model, with and without its quick settings.",
        "python benchmarks/quick_tries.py",
    ),
    "speed-tier": (
        "The speed tier",
        "fast-cnn and cnn94: accuracy per CPU-second, and every trick's ablation, the rows that did not help included.",
        "fmnist reproduce --model cnn94 --seeds 5",
    ),
    "accuracy-tier": (
        "The accuracy tier and the frontier",
        "res95, and accuracy against training time across the tiers.",
        "fmnist reproduce --model seed-cnn --model cnn94 --model res95",
    ),
    "speed": (
        "Speed",
        "fmnist against the report's TensorFlow-Keras program and against the same networks "
        "written plainly in eager PyTorch; steps against their floors; kernels; inference.",
        "fmnist bench --model cnn94; python benchmarks/compare_keras.py",
    ),
    "shared-machine": (
        "Speed on a shared machine",
        "Training beside other programs: OpenMP's waiting, threads, contention.",
        "python benchmarks/contention.py",
    ),
    "serving": (
        "Serving under load",
        "fmnist serve's throughput and latency at each concurrency, and what clients see when a replica dies.",
        "python benchmarks/serve_load.py RUN",
    ),
    "sweeps": (
        "Sweeps and parallel seeds",
        "Many runs on Ray: what parallel seeds buy on two cores, and how fast a sweep stops.",
        "fmnist reproduce --seeds 8 --workers 2 --threads 1",
    ),
    "reliability": (
        "Hostile input",
        "What a limit-sized hostile image, file or request costs.",
        "python benchmarks/hostile_images.py",
    ),
    "determinism": (
        "Determinism and the suite",
        "Same seed, same weights; faithfulness to Keras; the suite on other CPUs.",
        "python -m pytest -q",
    ),
}


# ---------------------------------------------------------------------------------------------
# The records
def load_records(root: Path = RESULTS) -> list[tuple[Path, dict]]:
    """Every record under results/, checked (a damaged one stops the build naming it)."""
    from fmnist.results import records

    found = []
    for path in sorted(root.rglob("*.json")):
        found.append((path, records.check(json.loads(path.read_text()), str(path.relative_to(ROOT)))))
    return found


def machine_line(record: dict) -> str:
    machine = record["machine"]
    what = machine.get("description") or (
        f"{machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('memory_gib')} GiB"
    )
    flags = ", ".join(machine.get("flags") or []) or "no flags recorded"
    torch = machine.get("torch") or (machine.get("libraries") or {}).get("torch")
    commit = f"commit {record['commit']}" if record.get("commit") else None
    if not commit and record.get("published_at"):
        commit = f"commit not recorded, published at {record['published_at']}"
    parts = [what, f"flags: {flags}", f"torch {torch}" if torch else None, record.get("date"), commit]
    return " · ".join(part for part in parts if part)


def cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_record(path: Path, record: dict) -> list[str]:
    lines = [f"### {record['title']}", "", f"*{machine_line(record)}*", ""]
    if record.get("command"):
        lines += [f"`{record['command']}`", ""]
    if record.get("columns") and record.get("rows"):
        lines += ["| " + " | ".join(map(cell, record["columns"])) + " |", "|" + "---|" * len(record["columns"])]
        lines += ["| " + " | ".join(map(cell, row)) + " |" for row in record["rows"]] + [""]
    else:
        lines += ["| figure | value |", "|---|---|"]
        lines += [f"| {cell(key)} | {cell(value)} |" for key, value in record["figures"].items()] + [""]
    lines += [f"- {note}" for note in record.get("notes") or []]
    source = record.get("source") or "measured"
    lines += ["", f"Record: `{path.relative_to(ROOT)}` ({source}).", ""]
    return lines


def results_pages(found: list[tuple[Path, dict]]) -> dict[Path, str]:
    pages = {}
    for subject, (title, about, command) in SUBJECTS.items():
        mine = [(path, record) for path, record in found if record["subject"] == subject]
        lines = [f"# {title}", "", about, "", f"Reproduce: `{command}` (each record names its own command).", ""]
        lines += ["Generated from the records under `results/` (docs/hooks.py): edit the records, not this page.", ""]
        for kind, description in KINDS.items():
            these = [(path, record) for path, record in mine if path.parent.name == kind]
            if these:
                lines += [f"## {description}", ""]
                newest = sorted(these, key=lambda item: (item[1].get("date") or "", item[0].name), reverse=True)
                for path, record in sorted(newest, key=lambda item: not item[1].get("headline")):  # headlines first
                    lines += render_record(path, record)
        if not mine:
            lines += ["No record yet.", ""]
        pages[DOCS / "results" / f"{subject}.md"] = "\n".join(lines).rstrip() + "\n"
    pages[DOCS / "results" / "index.md"] = results_index(found)
    return pages


def results_index(found: list[tuple[Path, dict]]) -> str:
    lines = [
        "# Results",
        "",
        "Every figure fmnist publishes, each from a record: a JSON file under `results/<machine kind>/`",
        "naming the command, the commit, the date and the machine. Accuracies are means ± sd over seeds of final",
        "weights; times are measured beside the report's own program (T: its 50 epochs in TensorFlow-Keras on",
        "the same machine, in the same sitting). Timings are ratios measured in one run on one machine.",
        "",
        headline_table(found, link_prefix=""),
        "",
        "| page | records |",
        "|---|---|",
    ]
    for subject, (title, _, _) in SUBJECTS.items():
        count = sum(record["subject"] == subject for _, record in found)
        lines.append(f"| [{title}]({subject}.md) | {count} |")
    return "\n".join(lines) + "\n"


def headline_table(found: list[tuple[Path, dict]], link_prefix: str) -> str:
    """Model · test accuracy · training time and fraction of T · machine · record: one row per headline record."""
    rows = [(path, record) for path, record in found if record.get("headline")]
    order = ["seed-cnn", "fast-cnn", "cnn94", "res95"]
    rows.sort(
        key=lambda item: order.index(item[1]["headline"]["model"]) if item[1]["headline"]["model"] in order else 9
    )
    lines = ["| model | test accuracy (seeds) | training time | machine | record |", "|---|---|---|---|---|"]
    for path, record in rows:
        head = record["headline"]
        accuracy = f"{head['test_accuracy_mean']:.4f} ± {head['test_accuracy_sd']:.4f} ({head['seeds']})"
        time = ", ".join(str(part) for part in (head.get("seconds"), head.get("fraction_of_T")) if part) or "–"
        kind = KINDS.get(path.parent.name, path.parent.name).split(" (")[0]
        target = f"{link_prefix}{record['subject']}.md"
        lines.append(f"| {head['model']} | {accuracy} | {time} | {kind} | [{path.stem}]({target}) |")
    return "\n".join(lines)


PRETRAINED_RECORD = "speed-tier--{model}-pretrained-weights.json"  # under results/<machine kind>/


def model_card(found: list[tuple[Path, dict]]) -> tuple[Path, str]:
    """The pretrained model's card in Hugging Face's manner (YAML metadata, then what it is, how it was made and
    how well it does), beside its weights."""
    from fmnist import runs
    from fmnist.data import fashion
    from fmnist.training import registry

    path, record = next(item for item in found if item[0].name == PRETRAINED_RECORD.format(model=runs.PRETRAINED))
    run_dir = ROOT / "src" / "fmnist" / "pretrained" / runs.PRETRAINED
    config, metrics = runs.read_config(run_dir), runs.read_json(run_dir / runs.METRICS)
    about, test = registry.describe(runs.PRETRAINED), metrics["test"]
    recorded = record["figures"][runs.PRETRAINED]["stats"]["test_accuracy"]["mean"]
    assert abs(recorded - test["accuracy"]) < 1e-9, f"{path.name} and {run_dir / runs.METRICS} disagree"
    machine = record["machine"]
    report = test["classification_report"]
    per_class = [f"| {name} | {report[name]['f1-score']:.3f} |" for name in fashion.CLASS_NAMES]
    lines = [
        "---",
        "license: mit",
        "library_name: fmnist",
        "pipeline_tag: image-classification",
        "tags: [image-classification, fashion-mnist, pytorch]",
        "datasets: [fashion_mnist]",
        "metrics: [accuracy]",
        "model-index:",
        f"- name: fmnist-{runs.PRETRAINED}",
        "  results:",
        "  - task: {type: image-classification}",
        "    dataset: {name: Fashion-MNIST, type: fashion_mnist, split: test}",
        f"    metrics: [{{type: accuracy, value: {test['accuracy']:.4f}}}]",
        "---",
        "",
        f"# {runs.PRETRAINED}: the model that ships with fmnist",
        "",
        "Generated by docs/hooks.py from the record, the run and the registry: edit those, not this file.",
        "",
        f"`{runs.PRETRAINED}` in fmnist's registry: {about['description']}; {about['parameters']:,} parameters, "
        f"{about['mflops']:.2f} MFLOPs per image.",
        "",
        "```bash",
        "fmnist predict --pretrained shoe.jpg      # or: fmnist.pretrained().predict(image)",
        "fmnist serve --pretrained",
        "```",
        "",
        "## Use and limits",
        "",
        "For Fashion-MNIST's ten classes of clothing, shoes and bags, one item per image: 28x28 grayscale, light on",
        "dark, as the dataset was made from product photos (fmnist preprocesses photos that way). Anything else",
        "(people, scenes, several items) still gets one of the ten classes: the model cannot say it sees none.",
        "",
        "## Training",
        "",
        f"- recipe: {about['recipe']}",
        f"- seed {config['seed']}, {config['precision']}, {config['threads']} threads, on all 60,000 training images "
        "(nothing held out: no validation curve)",
        f"- to make it again: `{record['command']}`",
        f"- machine: {machine.get('cpu')} ({machine.get('kind')}), {machine.get('cores')} cores, "
        f"torch {machine.get('libraries', {}).get('torch')}; fmnist commit {record['commit']}, {record['date']}",
        *(f"- {note}" for note in record["notes"]),
        "",
        "## Evaluation (test set, 10,000 images, final weights)",
        "",
        f"Accuracy {test['accuracy']:.4f} ({test['correct']:,} right, {test['wrong']:,} wrong), "
        f"loss {test['loss']:.4f}.",
        "",
        "| class | F1 |",
        "|---|---|",
        *per_class,
    ]
    return run_dir / "README.md", "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Blocks and pages from the code
def cli_page() -> str:
    from fmnist.cli import flags
    from fmnist.cli.main import HANDLERS

    parser = flags.build_parser(HANDLERS)
    lines = [
        "# CLI reference",
        "",
        "Generated from the parser itself (`fmnist COMMAND --help` prints the same).",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
        "",
    ]
    commands = next(action for action in parser._actions if action.choices and isinstance(action.choices, dict))
    for name, sub in commands.choices.items():
        lines += [f"## fmnist {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def block_models() -> str:
    from fmnist import api

    lines = ["| model | parameters | MFLOPs/image | recipe | network |", "|---|---|---|---|---|"]
    for row in api.models():
        name = f"**{row['name']}** (default)" if row["default"] else f"**{row['name']}**"
        fp32, quick = (
            ", ".join(f"{key.replace('_', '-')} {value}" for key, value in row[k].items()) for k in ("fp32", "quick")
        )
        recipe = row["recipe"] + (f"; in fp32 (no native bf16): {fp32}" if fp32 else "")
        recipe += f"; in a quick try: {quick}" if quick else ""
        lines.append(f"| {name} | {row['parameters']:,} | {row['mflops']:.2f} | {recipe} | {row['description']} |")
    return "\n".join(lines)


def block_layers() -> str:
    import importlib

    layers = ("core", "data", "runs", "nets", "training", "results", "interop", "studies", "api", "serving", "cli")
    lines = ["| layer | what it holds |", "|---|---|"]
    for layer in layers:
        module = importlib.import_module(f"fmnist.{layer}")
        where = f"`{layer}/`" if Path(module.__file__).name == "__init__.py" else f"`{layer}.py`"
        first = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())
        lines.append(f"| {where} | {first} |")
    return "\n".join(lines)


def block_run_directory() -> str:
    from fmnist import runs

    doc = runs.__doc__ or ""
    layout = doc[doc.index("RUN/") : doc.index("\n\n", doc.index("RUN/"))]
    rest = doc[doc.index("\n\n", doc.index("RUN/")) :].strip()
    return (
        "```text\n"
        + "\n".join(line[4:] for line in ("    " + layout).splitlines())
        + "\n```\n\n"
        + " ".join(rest.split())
    )


def block_limits() -> str:
    from fmnist import runs
    from fmnist.data import fashion, photos
    from fmnist.interop import from_keras
    from fmnist.serving import limits

    rows = [
        ("image file on disk", f"{photos.MAX_FILE_BYTES:,} bytes"),
        ("decoded image", f"{photos.MAX_PIXELS:,} pixels"),
        ("working copy of an image", f"{photos.WORKING_SIZE} px on its longest edge"),
        ("request body", f"{limits.MAX_BYTES:,} bytes (`--max-bytes`)"),
        ("images a request", f"{limits.MAX_FILES}"),
        ("request bodies in memory, all together", f"{limits.BODY_BUDGET:,} bytes"),
        ("images admitted at once (decoding or queued)", f"{limits.WORK_QUEUE:,}"),
        ("images decoding at once", f"the cores, at most {limits.MAX_DECODES}"),
        ("a request's deadline", f"{limits.REQUEST_TIMEOUT_S} s (`--request-timeout`)"),
        ("connections held at once", f"{limits.MAX_CONNECTIONS:,} (file descriptors permitting)"),
        ("a run's weights or checkpoint", f"{runs.MAX_FILE_BYTES:,} bytes (on disk, or unpacked)"),
        ("a run's JSON file", f"{runs.MAX_JSON_BYTES:,} bytes"),
        ("a Keras model's architecture (JSON)", f"{from_keras.MAX_CONFIG_BYTES:,} bytes"),
        ("a Keras weights file", f"{from_keras.MAX_WEIGHTS_BYTES:,} bytes"),
        ("a .keras archive", f"{from_keras.MAX_ARCHIVE_BYTES:,} bytes (by its declared sizes)"),
        ("a dataset download", f"its known size, within {fashion.DOWNLOAD_DEADLINE_S} s"),
    ]
    return "\n".join(["| what | at most |", "|---|---|", *(f"| {what} | {bound} |" for what, bound in rows)])


def block_seed_network() -> str:
    from fmnist import api

    rows, total = api.layer_table("seed-cnn")
    lines = ["| layer (type) | output shape | parameters |", "|---|---|---|"]
    lines += [f"| {name} | {shape} | {count:,} |" for name, shape, count in rows] + [f"| **total** | | **{total:,}** |"]
    return "\n".join(lines)


def block_published() -> str:
    from fmnist.data import seed_report

    p = seed_report.PUBLISHED
    lines = ["| figure | the report | its program rerun with TF-Keras (2 cores) |", "|---|---|---|"]
    for key, label in (
        ("test_loss", "test loss"),
        ("test_accuracy", "test accuracy"),
        ("train_loss", "training loss (48,000 images)"),
        ("train_accuracy", "training accuracy"),
    ):
        lines.append(f"| {label} | {p[key]} | {seed_report.TF_RERUN[key]} |")
    lines += ["", "| class | precision | correct |", "|---|---|---|"]
    lines += [
        f"| {name} | {precision:.2f} | {correct} |"
        for name, (precision, correct) in seed_report.PUBLISHED_PER_CLASS.items()
    ]
    return "\n".join(lines)


def block_benchmarks() -> str:
    """Each script's first sentence, and the page its records belong to (the subject its record() call names)."""
    import ast

    lines = ["| script | what it measures | results page |", "|---|---|---|"]
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text())
        doc = " ".join((ast.get_docstring(tree) or "").split())
        first = doc.split(". ")[0].rstrip(".") + "."
        subjects = {
            node.args[0].value
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and ast.unparse(node.func) == "records.record"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        }
        pages = ", ".join(f"[{SUBJECTS[subject][0]}](results/{subject}.md)" for subject in sorted(subjects))
        lines.append(f"| `{path.name}` | {first} | {pages or '–'} |")
    return "\n".join(lines)


BLOCKS = {
    "benchmarks": block_benchmarks,
    "models": block_models,
    "layers": block_layers,
    "run-directory": block_run_directory,
    "limits": block_limits,
    "seed-network": block_seed_network,
    "published": block_published,
}


def with_blocks(text: str, values: dict[str, str]) -> str:
    return BLOCK.sub(lambda m: m.group(1) + values[m.group("name")].rstrip() + "\n" + m.group(4), text)


# ---------------------------------------------------------------------------------------------
def generated() -> dict[Path, str]:
    """Every generated file's content, as it should be now."""
    found = load_records()
    values = {name: make() for name, make in BLOCKS.items()}
    values["headline"] = headline_table(found, link_prefix="docs/results/")
    out = results_pages(found)
    out[DOCS / "cli.md"] = cli_page()
    card, text = model_card(found)
    out[card] = text
    for page in [*DOCS.glob("*.md"), ROOT / "README.md"]:
        text = page.read_text()
        if BLOCK.search(text):
            out[page] = with_blocks(text, values)
    return out


def out_of_date() -> list[Path]:
    return [path for path, text in generated().items() if not path.is_file() or path.read_text() != text]


def write_all() -> list[Path]:
    written = []
    for path, text in generated().items():
        if not path.is_file() or path.read_text() != text:  # unchanged files untouched: `mkdocs serve` would loop
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    notebook = ROOT / "notebooks" / "fashion_mnist.ipynb"
    if not (DOCS / "notebook.ipynb").is_file() or (DOCS / "notebook.ipynb").read_bytes() != notebook.read_bytes():
        shutil.copyfile(notebook, DOCS / "notebook.ipynb")
    return written


def on_pre_build(config, **kwargs) -> None:
    """MkDocs' hook: the generated parts, fresh, before the site is built."""
    write_all()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write the documentation's generated parts (or check them).")
    parser.add_argument("--check", action="store_true", help="say what is out of date, write nothing (exit 1 if any)")
    args = parser.parse_args()
    if args.check:
        stale = out_of_date()
        print("\n".join(f"out of date: {path.relative_to(ROOT)}" for path in stale) or "up to date")
        sys.exit(1 if stale else 0)
    print("\n".join(f"wrote {path.relative_to(ROOT)}" for path in write_all()) or "nothing to write")
