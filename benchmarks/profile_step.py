"""Where a model's training step goes: torch.profiler over steps of the model's own recipe (optimizer,
label smoothing, precision as training chooses it), self CPU time summed by kind of operator.

    python benchmarks/profile_step.py --model cnn94 [--precision auto] [--steps 30] [--threads 2] [--top 20]
"""

from __future__ import annotations

import collections
import math

import fmnist  # noqa: F401  (first: it sets how OpenMP threads wait, before torch loads)

# isort: split
import torch
from torch.profiler import ProfilerActivity, profile

from fmnist.data import fashion
from fmnist.results import records
from fmnist.training import checkpoint, configs, loop

KINDS = [  # (kind, substrings of operator names), first match wins
    ("convolution", ("convolution", "conv2d", "mkldnn_conv")),
    ("matrix product", ("addmm", "mm", "linear", "matmul")),
    ("BatchNorm", ("batch_norm",)),
    ("pooling", ("pool",)),
    ("ReLU", ("relu", "threshold")),
    ("optimizer", ("_foreach", "sgd", "adam", "lerp")),
    ("loss", ("cross_entropy", "log_softmax", "nll")),
    ("casts and copies", ("copy_", "to", "_to_copy", "clone", "contiguous")),
]


def kind_of(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, keys in KINDS if any(key in lowered for key in keys)), "other")


def main(argv: list[str] | None = None) -> dict:
    parser = records.benchmark_parser(__doc__, rounds=1)
    parser.add_argument("--model", default="cnn94")
    parser.add_argument("--precision", default="auto", choices=configs.PRECISIONS)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--top", type=int, default=0, help="also list the N operators taking the most self time")
    args = parser.parse_args(argv)
    args.steps = 2 if args.quick else args.steps
    threads = records.start(args)
    cpu = torch.device("cpu")
    precision = loop.choose_precision(args.precision, args.model, cpu)
    config = configs.TrainConfig.for_model(args.model, precision=precision)
    images = torch.rand(config.batch_size * (args.steps + 3), fashion.IMAGE_SIZE, fashion.IMAGE_SIZE, 1)
    labels = torch.randint(0, fashion.NUM_CLASSES, (len(images),))
    state = checkpoint.new_state(config, cpu, math.ceil(len(images) / config.batch_size), images)
    warm = config.batch_size * 3
    loop.train_one_epoch(
        state.network, state.optimizer, images[:warm], labels[:warm], config, state.generator, precision=precision
    )
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        loop.train_one_epoch(
            state.network, state.optimizer, images[warm:], labels[warm:], config, state.generator, precision=precision
        )
    totals = collections.Counter()
    for event in trace.key_averages():
        totals[kind_of(event.key)] += event.self_cpu_time_total
    whole = sum(totals.values())
    print(
        f"{args.model} in {precision}, batch {config.batch_size}, {threads} threads: "
        f"{whole / 1000 / args.steps:.2f} ms of operators per step"
    )
    for kind, micros in totals.most_common():
        print(f"  {kind:18s} {micros / 1000 / args.steps:7.2f} ms/step  {micros / whole:6.1%}")
    rows = [
        [kind, f"{micros / 1000 / args.steps:.2f}", f"{micros / whole:.1%}"] for kind, micros in totals.most_common()
    ]
    for event in sorted(trace.key_averages(), key=lambda e: -e.self_cpu_time_total)[: args.top]:
        print(
            f"    {event.key[:44]:44s} {event.self_cpu_time_total / 1000 / args.steps:7.3f} ms/step "
            f"{event.count / args.steps:5.1f} calls/step"
        )

    figures = {"ms_per_step": whole / 1000 / args.steps, **{kind: micros / whole for kind, micros in totals.items()}}
    return records.publish(
        "profile_step",
        args,
        records.record(
            "speed",
            f"Where {args.model}'s step goes ({precision}, batch {config.batch_size})",
            figures,
            ["kind of operator", "ms per step", "share"],
            rows,
        ),
    )


if __name__ == "__main__":
    main()
