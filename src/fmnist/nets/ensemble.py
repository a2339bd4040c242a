"""An ensemble as one network: independently trained members, each in its evaluation form (its own TTA),
their outputs averaged. Evaluation, prediction, serving and ONNX export take it as any network.

Two ways to average, chosen on validation when the ensemble is made (training/ensembles.py):
  logits         the mean of the members' logits;
  probabilities  the mean of their probabilities, returned as its logarithm: a softmax of the output gives
                 that mean exactly, so the output reads as logits everywhere.

Weights: one safetensors file, member i's tensors under "i." (their own names after it), the metadata
recording ARCHITECTURE, the combination, and per member its architecture tag and TTA (runs.tta_metadata).
"""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURE = "ensemble-v1"
COMBINES = ("logits", "probabilities")
MAX_MEMBERS = 32  # a weights file may claim anything: more members than this are refused


class Ensemble(nn.Module):
    """(N, 28, 28, 1) images -> (N, 10): the members' combined output (see the module's docstring)."""

    def __init__(self, members: list[nn.Module], combine: str):
        super().__init__()
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {', '.join(COMBINES)}, got {combine!r}")
        self.members, self.combine = nn.ModuleList(members), combine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return combined(torch.stack([member(x) for member in self.members]), self.combine)


def combined(outputs: torch.Tensor, combine: str) -> torch.Tensor:
    """(M, N, 10) members' logits -> (N, 10): their mean, or the log of their probabilities' mean."""
    if combine == "logits":
        return outputs.mean(0)
    # log(mean_m softmax(o_m)) = logsumexp_m(log_softmax(o_m)) - log M: stable where probabilities are tiny
    return torch.logsumexp(F.log_softmax(outputs, dim=-1), dim=0) - math.log(outputs.shape[0])


def reference_probabilities(members: list[nn.Module], x: torch.Tensor, combine: str) -> torch.Tensor:
    """The plain form: each member alone, one after another, averaged as the ensemble says."""
    outputs = [member(x) for member in members]
    if combine == "logits":
        return F.softmax(sum(outputs) / len(outputs), dim=1)
    return sum(F.softmax(output, dim=1) for output in outputs) / len(outputs)


def packed(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Members' state dicts as one: member i's tensors under "i.NAME"."""
    return {f"{index}.{name}": tensor for index, state in enumerate(states) for name, tensor in state.items()}


def unpacked(tensors: dict[str, torch.Tensor], count: int) -> list[dict[str, torch.Tensor]]:
    """`packed` undone; a tensor that belongs to no member i < count makes the file wrong (KeyError)."""
    states: list[dict[str, torch.Tensor]] = [{} for _ in range(count)]
    for key, tensor in tensors.items():
        index, _, name = key.partition(".")
        if not index.isdigit() or int(index) >= count:
            raise KeyError(key)
        states[int(index)][name] = tensor
    return states


def members_metadata(members: list[dict[str, str]], combine: str) -> dict[str, str]:
    return {"members": json.dumps(members), "combine": combine}


def read_metadata(metadata: dict[str, str]) -> tuple[list[dict[str, str]], str]:
    """(per member its metadata, the combination) from an ensemble's weights metadata; ValueError if it is
    not what `members_metadata` writes (a file may hold anything)."""
    members = json.loads(metadata.get("members", "null"))
    combine = metadata.get("combine")
    if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS or combine not in COMBINES:
        raise ValueError(f"1 to {MAX_MEMBERS} members and a combination ({', '.join(COMBINES)}) expected")
    if not all(isinstance(m, dict) and all(isinstance(v, str) for v in m.values()) for m in members):
        raise ValueError("each member's metadata must be a set of names and texts")
    return members, combine
