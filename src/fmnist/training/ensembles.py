"""Ensembles as runs: finished runs' networks averaged as one model (nets/ensemble.py), in a run directory
that evaluate, report, predict, serve and export read as any other (runs.py).

`make` checks every member first (a missing or damaged one is one error naming it), chooses how to average
(logits or probabilities) on the members' shared validation split, and writes model.safetensors (every
member inside), config.json (the first member's settings, which evaluation reads, and an "ensemble" entry:
the members' models, seeds and training times, the choice and the validation figures behind it) and an
empty history (an ensemble trains no epoch of its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from fmnist import runs
from fmnist.core import errors, files
from fmnist.nets import ensemble, inference
from fmnist.nets.inference import EVAL_BATCH_SIZE
from fmnist.training import configs, loop


def make(members: Sequence[str | Path], out: str | Path, combine: str = "auto", data_dir: str | None = None) -> Path:
    """An ensemble of the runs `members` written into the new run directory `out`; `combine`: "logits",
    "probabilities", or "auto" (chosen on validation; probabilities where nothing was held out)."""
    if combine not in ("auto", *ensemble.COMBINES):
        raise errors.InputError(f"combine must be auto, {' or '.join(ensemble.COMBINES)}, got {combine!r}")
    if len(members) < 2 or len(members) > ensemble.MAX_MEMBERS:
        raise errors.InputError(f"an ensemble takes 2 to {ensemble.MAX_MEMBERS} runs, got {len(members)}")
    out = runs.require_new(Path(out), "write the ensemble to another directory")
    loaded = [load_member(Path(member)) for member in members]
    settings = [member["config"] for member in loaded]
    for name in configs.SPLIT_FIELDS:  # the split evaluation reads, and the choice below is made on
        if len({repr(config.get(name)) for config in settings}) > 1:
            raise errors.InputError(f"the members were trained with different {name} values: give runs that agree")
    split = configs.load_config(Path(members[0]), data_dir=data_dir)
    validation = validation_figures([m["network"] for m in loaded], split)
    chosen = "given" if combine != "auto" else "on validation (loss)" if validation else "nothing held out"
    if combine == "auto":
        combine = min(validation, key=lambda c: validation[c]["loss"]) if validation else "probabilities"
    described = [
        {"run": Path(member).resolve().name, **{key: m["config"].get(key) for key in ("model", "seed", "epochs")}}
        | {"seconds": m["seconds"]}
        for member, m in zip(members, loaded)
    ]
    metadata = ensemble.members_metadata([m["metadata"] for m in loaded], combine)
    state = ensemble.packed([m["tensors"] for m in loaded])
    runs.save_weights(files.output_dir(out) / runs.WEIGHTS, state, ensemble.ARCHITECTURE, **metadata)
    summary = {
        "members": described,
        "combine": combine,
        "chosen": chosen,
        "validation": validation,
        "training_seconds": sum(m["seconds"] for m in loaded),
    }
    files.write_json(out / runs.HISTORY, [])
    files.write_json(out / runs.CONFIG, {**settings[0], "ensemble": summary})  # config last: a run once it exists
    return out


def load_member(run_dir: Path) -> dict:
    """A member's config, weights (checked by building its network) and training time; RunError naming it."""
    if not runs.holds_run(run_dir):
        raise errors.RunError(f"ensemble member {run_dir}: no run there ({runs.CONFIG} is missing)")
    config = runs.read_config(run_dir)
    if "ensemble" in config:
        raise errors.InputError(f"ensemble member {run_dir} is itself an ensemble: give its members instead")
    tensors, metadata = runs.load_weights(run_dir / runs.WEIGHTS)
    network = inference.network_from(tensors, metadata, str(run_dir / runs.WEIGHTS), dropout=0.0)
    member_metadata = {"architecture": metadata["architecture"], **runs.tta_metadata(*runs.tta_of(metadata, ""))}
    elapsed = runs.elapsed(runs.read_history(run_dir))
    return {
        "config": config,
        "tensors": tensors,
        "metadata": member_metadata,
        "network": network,
        "seconds": elapsed[-1] if elapsed else 0.0,
    }


@torch.inference_mode()
def validation_figures(networks: list, config: configs.TrainConfig) -> dict[str, dict[str, float]]:
    """Per way of averaging, the ensemble's loss and accuracy on the members' validation split (`config`'s);
    {} where they held nothing out."""
    _, (x, y) = loop.prepare_data(config, inference.CPU)
    if len(x) == 0:
        return {}
    outputs = torch.stack(  # (members, N, 10): each member's logits once, both averages from them
        [torch.cat([net(x[i : i + EVAL_BATCH_SIZE]) for i in range(0, len(x), EVAL_BATCH_SIZE)]) for net in networks]
    )
    figures = {}
    for combine in ensemble.COMBINES:
        logits = ensemble.combined(outputs, combine)
        figures[combine] = {
            "loss": F.cross_entropy(logits, y).item(),
            "accuracy": (logits.argmax(1) == y).float().mean().item(),
        }
    return figures
