"""An ensemble against its members: test accuracy (final weights), training seconds, inference images/s.

    python benchmarks/ensemble.py RUN RUN [RUN ...] [--rounds 5] [--threads N] [--quick] [--out FILE]

The members are finished runs (e.g. `fmnist reproduce --model cnn94 --seeds 3 --validation-fraction 0`);
the ensemble is made from them (fmnist.ensemble, in a temporary directory) and each model predicts the
10,000 test images in fp32: its accuracy, and the images/s of the ensemble (in fp32 and in bf16) and of
its first member (fp32), timed in interleaved rounds. Training seconds are the members' own (their
history), summed for the ensemble.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import fmnist
from fmnist.nets import inference
from fmnist.results import records


def main(argv: list[str] | None = None) -> dict:
    parser = records.benchmark_parser(__doc__, rounds=5)
    parser.add_argument("members", nargs="+", help="the member runs")
    args = parser.parse_args(argv)
    threads = records.start(args)
    dataset = fmnist.load_data(show_progress=False)
    count = 200 if args.quick else len(dataset.test_images)
    images, labels = dataset.test_images[:count], dataset.test_labels[:count]
    with tempfile.TemporaryDirectory() as folder:
        together = fmnist.ensemble(args.members, Path(folder) / "ensemble")
        models = {Path(member).name: fmnist.open_run(member) for member in args.members} | {"ensemble": together}
        figures: dict = {"threads": threads, "test_images": count, "combine": together.ensemble["combine"]}
        for name, run in models.items():
            accuracy = float((run.predict(images).classes == labels).mean())
            seconds = together.ensemble["training_seconds"] if name == "ensemble" else run.history[-1]["elapsed"]
            figures[name] = {"test_accuracy": accuracy, "training_seconds": seconds}
            print(f"{name}: test accuracy {accuracy:.4f}, {seconds:.0f} s of training", flush=True)
        timed = {
            "first member": models[Path(args.members[0]).name].model(),
            "ensemble": together.model(),
            "ensemble in bf16": together.model(precision="bf16"),
        }
        samples = records.interleaved(
            {name: lambda net=net: inference.probabilities(net, images) for name, net in timed.items()},
            1 if args.quick else args.rounds,
        )
    rates = {name: count / statistics.median(times) for name, times in samples.items()}
    figures["images_per_second"] = rates
    member_accuracies = [figures[Path(m).name]["test_accuracy"] for m in args.members]
    rows = [
        [name, f"{figures[name]['test_accuracy']:.4f}", f"{figures[name]['training_seconds']:.0f} s"] for name in models
    ]
    rows.append(["members' mean", f"{statistics.mean(member_accuracies):.4f}", ""])
    rows.append(["images/s, fp32", f"first member {rates['first member']:,.0f}", f"ensemble {rates['ensemble']:,.0f}"])
    rows.append(["images/s, bf16", "", f"ensemble {rates['ensemble in bf16']:,.0f}"])
    print(" | ".join(rows[-1]), flush=True)
    return records.publish(
        "ensemble",
        args,
        records.record(
            "accuracy-tier",
            f"An ensemble of {len(args.members)} runs against its members: test accuracy, training time, images/s",
            figures,
            ["model", "test accuracy", "training"],
            rows,
            rounds=samples,
        ),
    )


if __name__ == "__main__":
    main()
