"""Training speed, measured as ratios in one run: fmnist's step against a plain eager PyTorch baseline.

The baseline is what a straightforward port of the same network looks like (each architecture's `plain`,
beside its network): NCHW tensors, nn.Conv2d, nn.Linear, F.max_pool2d, the same optimizer. Both see the
same random batch; their timings are interleaved round by round and the median round is reported, so that
a noisy, shared machine affects both alike. The floor, the step's convolutions and matrix products alone, is timed in
the same rounds.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fmnist.core import machine
from fmnist.data import fashion
from fmnist.nets import architectures, inference
from fmnist.results import records
from fmnist.training import checkpoint, configs, loop, recipe, registry


def step_function(network, optimizer, x, y, precision: str = "fp32", label_smoothing: float = 0.0):
    """A training step on the batch (x, y) as the loop takes it (loop.train_step), to call again and again."""
    return lambda: loop.train_step(network, optimizer, x, y, precision, label_smoothing)


def recipe_step(name: str, x: torch.Tensor, y: torch.Tensor, precision: str = "fp32", **variant):
    """A training step of the model's own network and recipe (optimizer, label smoothing, BatchNorm
    settings) on the batch (x, y); `variant`: the network's keyword arguments (its registry's variants)."""
    config = configs.TrainConfig.for_model(name)
    network = registry.get(name).build(config.dropout, **variant).to(x.device).train()
    recipe.set_up_network(network, config.dirac, config.bn_weight, config.bn_momentum)
    return step_function(network, recipe.optimizer_for(network, config), x, y, precision, config.label_smoothing)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, steps: int, device: torch.device) -> float:
    """Seconds per step over `steps` steps."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


FLOOR = "floor"  # compare_steps' key for the floor's step


def compare_steps(
    name: str, batch_size: int, steps: int, rounds: int, device: torch.device, precision: str = "fp32"
) -> dict[str, float]:
    """Median seconds per training step of fmnist, its variants, the plain baseline and (FLOOR) the step's
    convolutions and matrix products alone, all interleaved: a host's slow spell slows each alike, so the
    ratios hold where the absolute times drift."""
    torch.manual_seed(0)
    config = configs.TrainConfig.for_model(name)
    x = torch.rand(batch_size, fashion.IMAGE_SIZE, fashion.IMAGE_SIZE, 1, device=device)
    y = torch.randint(0, fashion.NUM_CLASSES, (batch_size,), device=device)
    plain = architectures.ARCHITECTURES[registry.get(name).architecture].plain().to(device).train()
    optimizer = (
        torch.optim.Adam(plain.parameters(), eps=recipe.EPSILON)
        if config.optimizer == "adam"
        else recipe.optimizer_for(plain, config)
    )  # the same optimizer, written the usual way
    steps_by_name = {
        "fmnist": recipe_step(name, x, y, precision),
        **{
            label: recipe_step(name, x, y, precision, **kwargs) for label, kwargs in registry.get(name).variants.items()
        },
    }
    steps_by_name["plain eager PyTorch"] = step_function(
        plain, optimizer, x.permute(0, 3, 1, 2).contiguous(), y, precision, config.label_smoothing
    )  # the same precision
    steps_by_name[FLOOR] = floor_step(name, batch_size, device, precision)
    for step in steps_by_name.values():
        time_steps(step, 3, device)  # warm-up: allocator, kernels, thread pool
    samples: dict[str, list[float]] = {key: [] for key in steps_by_name}
    for _ in range(rounds):
        for key, step in steps_by_name.items():
            samples[key].append(time_steps(step, steps, device))
    return {key: statistics.median(values) for key, values in samples.items()}


def floor_step(name: str, batch_size: int, device: torch.device, precision: str = "fp32"):
    """A step of the training step's convolutions and matrix products alone, in its precision: the floor
    under it."""
    architecture = architectures.ARCHITECTURES[registry.get(name).architecture]
    autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with autocast():
        products = (
            matmul_step(architecture.products(batch_size), device)
            if architecture.products is not None
            else layer_step(architecture.network(dropout=0.0).to(device), batch_size, device)
        )

    def step():
        with autocast():
            products()

    return step


def layer_step(network: nn.Module, batch_size: int, device: torch.device):
    """Each nn.Conv2d and nn.Linear of the network, forward and backward on inputs of its real shape
    and memory format, nothing between them (in the caller's autocast, if any)."""
    inputs = []
    hooks = [
        layer.register_forward_hook(lambda layer, args, out: inputs.append((layer, args[0].detach())))
        for layer in network.modules()
        if isinstance(layer, (nn.Conv2d, nn.Linear))
    ]
    network.train()(torch.rand(batch_size, fashion.IMAGE_SIZE, fashion.IMAGE_SIZE, 1, device=device))
    for hook in hooks:
        hook.remove()
    operands = []
    for index, (layer, x) in enumerate(inputs):
        x.requires_grad_(index > 0)  # the image needs no gradient
        wrt = ([x] if index else []) + [p for p in layer.parameters() if p.requires_grad]  # frozen: none either
        operands.append((layer, x, wrt, torch.rand_like(layer(x))))

    def step():
        for layer, x, wrt, grad in operands:
            out = layer(x)
            if wrt:  # the gradients returned, not added into .grad: a training step assigns its own
                torch.autograd.grad(out, wrt, grad)

    return step


def matmul_step(products: list[tuple[int, int, int]], device: torch.device):
    """A network's matrix products alone, (rows, in) @ (in, out) each, forward and backward, float32. No
    implementation that uses PyTorch's matmul can take less: the floor under the step."""
    operands = [
        (
            torch.rand(rows, fan_in, device=device),
            torch.rand(fan_in, fan_out, device=device),
            torch.rand(rows, fan_out, device=device),
        )
        for rows, fan_in, fan_out in products
    ]

    def step():
        for index, (x, w, grad) in enumerate(operands):
            x @ w  # forward
            x.t() @ grad  # kernel gradient
            if index:  # input gradient (the first layer's input is the image: none needed)
                grad @ w.t()

    return step


def time_epoch(
    name: str, num_train: int, num_val: int, batch_size: int, device: torch.device, precision: str = "fp32"
) -> tuple[float, float]:
    """(seconds for one training epoch, seconds for its validation) on random data of the real sizes,
    with the model's whole recipe (augmentation, schedule, TTA)."""
    torch.manual_seed(0)
    config = configs.TrainConfig.for_model(name, batch_size=batch_size)
    images = torch.rand(num_train + num_val, fashion.IMAGE_SIZE, fashion.IMAGE_SIZE, 1, device=device)
    labels = torch.randint(0, fashion.NUM_CLASSES, (num_train + num_val,), device=device)
    state = checkpoint.new_state(config, device, config.steps_per_epoch(num_train), images[:num_train])  # as training
    network = state.network
    synchronize(device)
    start = time.perf_counter()
    loss, _ = loop.train_one_epoch(
        network,
        state.optimizer,
        images[:num_train],
        labels[:num_train],
        config,
        state.generator,
        precision=precision,
        plan=loop.plan_epoch(config, 0, images[:num_train], state.lookahead),
    )
    loss.item()  # waits for the device
    middle = time.perf_counter()
    loop.validate(network, dataclasses.replace(config, precision=precision), images[num_train:], labels[num_train:])
    return middle - start, time.perf_counter() - middle


def evaluation_throughput(name: str, num_images: int, device: torch.device, precision: str = "fp32") -> float:
    """Images per second through predict_probabilities (inference mode, large batches, the model's TTA),
    computed in `precision` (inference.INFERENCE_PRECISIONS)."""
    config = configs.Recipe.for_model(name)
    network = inference.evaluation_form(registry.get(name).build(0.0), config.tta, config.tta_shift, precision)
    network = network.to(device).eval()
    images = torch.rand(num_images, fashion.IMAGE_SIZE, fashion.IMAGE_SIZE, 1, device=device)
    inference.predict_probabilities(network, images[: inference.EVAL_BATCH_SIZE])  # warm-up
    synchronize(device)
    start = time.perf_counter()
    inference.predict_probabilities(network, images)
    synchronize(device)
    return num_images / (time.perf_counter() - start)


def evaluation_throughputs(name: str, num_images: int, device: torch.device) -> dict[str, float]:
    """evaluation_throughput in each of inference.INFERENCE_PRECISIONS: {"fp32": images/s, "bf16": images/s}."""
    return {
        precision: evaluation_throughput(name, num_images, device, precision)
        for precision in inference.INFERENCE_PRECISIONS
    }


def epoch_sizes(quick: bool) -> tuple[int, int, int]:
    """(training, validation, evaluation) images: the report's split of the dataset, or a small slice of it."""
    if quick:
        return 1_280, 320, 500
    total = fashion.FILES["train_images"].count
    train = fashion.split_index(total, configs.Recipe().validation_fraction)
    return train, total - train, fashion.FILES["test_images"].count


def run(
    quick: bool = False,
    device: str = "auto",
    threads: int | None = None,
    batch_size: int | None = None,
    precision: str = "auto",
    name: str = registry.DEFAULT,
) -> dict:
    """Everything `fmnist bench` prints, as a dict. The batch size and precision default to what training
    uses: the model's recipe, and the precision `--precision auto` chooses on this machine."""
    for what, value in (("threads", threads), ("batch size", batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"{what} must be >= 1, got {value}")
    batch_size = batch_size or configs.Recipe.for_model(name).batch_size  # ValueError naming the models there are
    machine.set_up(threads)
    target = machine.resolve_device(device)
    precision = loop.choose_precision(precision, name, target)
    steps, rounds = (3, 2) if quick else (30, 7)
    num_train, num_val, num_eval = epoch_sizes(quick)
    per_step = compare_steps(name, batch_size, steps, rounds, target, precision)
    floor = per_step.pop(FLOOR)
    epoch_seconds, val_seconds = time_epoch(name, num_train, num_val, batch_size, target, precision)
    return {
        "machine": machine.describe_machine(target),
        "model": name,
        "batch_size": batch_size,
        "quick": quick,
        "precision": precision,
        "step_seconds": per_step,
        "speedup": per_step["plain eager PyTorch"] / per_step["fmnist"],
        "floor_seconds": floor,
        "epoch_seconds": epoch_seconds,
        "validation_seconds": val_seconds,
        "epoch_images": num_train,
        "eval_images_per_second": evaluation_throughputs(name, num_eval, target),
    }


def write_record(result: dict, path: Path, given: Mapping[str, object]) -> Path:
    """`fmnist bench`'s result as a record (results/records.py): its table is the step's, ratios to plain
    eager PyTorch; the epoch, validation and evaluation figures ride along in `figures`. `given`: the flags
    typed (those not None nor "auto" go into the record's command)."""
    typed = [f"{flag} {value}" for flag, value in given.items() if value not in (None, "auto")]
    command = " ".join(["fmnist bench --model", result["model"], *(["--quick"] if result["quick"] else []), *typed])
    steps, batch = result["step_seconds"], result["batch_size"]
    baseline = steps["plain eager PyTorch"]
    rows = [[name, f"{1000 * seconds:.2f}", f"{baseline / seconds:.2f}x"] for name, seconds in steps.items()]
    rows.append(["floor (convolutions and matrix products alone)", f"{1000 * result['floor_seconds']:.2f}", ""])
    figures = {key: value for key, value in result.items() if key != "machine"}
    notes = ["--quick: a check that it runs, not a measurement"] if result["quick"] else []
    title = f"{result['model']}'s training step, batch {batch}, {result['precision']}: fmnist against eager PyTorch"
    value = records.record(
        "speed", title, figures, ["implementation", "ms/step", "speed-up"], rows, command=command, notes=notes
    )
    return records.write(path, value)
