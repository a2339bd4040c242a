"""The fused BatchNorm blocks (norm_kernels.py) against their plain form, bit for bit, and against PyTorch's
own BatchNorm2d -> max pool -> ReLU, to bf16's precision; where the networks use them, and where not."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fmnist import runs
from fmnist.nets import fastcnn
from fmnist.nets.kernels import norm_kernels
from fmnist.training import configs, loop, recipe, registry
from tests.helpers import require_real_data

SHAPES = [(6, 16, 28, 28), (5, 32, 14, 14), (4, 64, 7, 7), (3, 5, 6, 4), (2, 3, 2, 2)]
BLOCKS = [(shape, pool) for shape in SHAPES for pool in (True, False) if not (pool and shape[2] % 2)]  # pools: even


def activations(shape, seed=0) -> torch.Tensor:
    """bf16 channels-last conv outputs with the ties real ones have: zeros, repeated values, whole channels
    negative (after BatchNorm with a negative bias: windows with no gradient at all), a constant channel
    (its variance 0, where rounding could take it below)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator) * 3 + 1
    x[:, :1] = 0.0
    x[:, 1:2] = x[:, 1:2].round()
    x[:, 2:3] = 0.3
    return x.bfloat16().contiguous(memory_format=torch.channels_last)


def batch_norm(channels: int, trains_weight: bool, seed=0) -> nn.BatchNorm2d:
    generator = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels, momentum=0.4)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=generator) * 2 - 0.5)  # some negative: max is not monotone
        bn.bias.copy_(torch.randn(channels, generator=generator))
        bn.running_mean.copy_(torch.randn(channels, generator=generator))
    bn.weight.requires_grad_(trains_weight)
    return bn


def forward_backward(x, bn, pool, block) -> dict[str, torch.Tensor]:
    """Output, gradients and BatchNorm's state after one training step of `block`."""
    x = x.clone().requires_grad_()
    out = block(x, bn, pool)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).bfloat16())
    return {
        "out": out,
        "dx": x.grad,
        "bias grad": bn.bias.grad,
        "weight grad": bn.weight.grad,
        "running mean": bn.running_mean,
        "running var": bn.running_var,
        "batches": bn.num_batches_tracked,
    }


def fused(x, bn, pool):
    assert norm_kernels.applicable(x, bn, nn.MaxPool2d(2) if pool else None)
    return norm_kernels.norm_relu(x, bn, pool)


def plain(x, bn, pool):
    return norm_kernels.norm_relu(x, bn, pool, plain=True)


def pytorch(x, bn, pool):
    out = bn(x)
    return (F.max_pool2d(out, 2) if pool else out).relu()


@pytest.mark.parametrize("shape, pool", BLOCKS)
@pytest.mark.parametrize("trains_weight", [True, False])
def test_fused_blocks_equal_their_plain_form_bit_for_bit(shape, pool, trains_weight):
    x, bn = activations(shape), batch_norm(shape[1], trains_weight)
    ours, reference = forward_backward(x, copy.deepcopy(bn), pool, fused), forward_backward(x, bn, pool, plain)
    for name, value in reference.items():
        assert (ours[name] is None) == (value is None) and (value is None or torch.equal(ours[name], value)), name
    assert ours["out"].is_contiguous(memory_format=torch.channels_last) and ours["dx"].dtype == torch.bfloat16
    assert torch.isfinite(ours["dx"].float()).all() and (ours["running var"] >= 0).all()


@pytest.mark.parametrize("pool", [True, False])
def test_the_plain_form_is_pytorchs_batch_norm_pool_relu_to_bf16_precision(pool):
    """The statistics are summed in another order and precision here: a value on a bf16 rounding boundary
    may land one step away, and a gradient that follows a tie may go to another cell."""
    x, bn = activations((16, 16, 28, 28)), batch_norm(16, trains_weight=True)
    ours, theirs = forward_backward(x, copy.deepcopy(bn), pool, plain), forward_backward(x, bn, pool, pytorch)
    step = ours["out"].float().abs().clamp(min=1) * 2**-7  # one bf16 step, at most
    assert ((ours["out"].float() - theirs["out"].float()).abs() <= step).all()
    assert (ours["out"] == theirs["out"]).float().mean() > 0.995
    assert torch.equal(ours["batches"], theirs["batches"])
    for name in ("dx", "bias grad", "weight grad", "running mean", "running var"):
        torch.testing.assert_close(ours[name].float(), theirs[name].float(), rtol=0.02, atol=0.02, msg=name)


def test_any_thread_count_gives_the_same_bits():
    x, bn = activations((8, 32, 14, 14)), batch_norm(32, trains_weight=False)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(forward_backward(x, copy.deepcopy(bn), True, fused))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0][name], results[1][name]) for name in ("out", "dx", "bias grad"))


def test_blocks_run_fused_only_in_bf16_training_on_the_cpu():
    x = activations((2, 4, 6, 6))
    bn, pool = batch_norm(4, trains_weight=False), nn.MaxPool2d(2)
    assert norm_kernels.applicable(x, bn, pool) and norm_kernels.applicable(x, bn, None)
    assert not norm_kernels.applicable(x.float(), bn, pool)  # fp32
    assert not norm_kernels.applicable(x.contiguous(), bn, pool)  # NCHW memory
    assert not norm_kernels.applicable(x[:, :, :5, :5].contiguous(memory_format=torch.channels_last), bn, pool)  # odd
    assert not norm_kernels.applicable(x, bn, nn.MaxPool2d(2, stride=1))  # another pool
    assert not norm_kernels.applicable(x, copy.deepcopy(bn).eval(), pool)  # running statistics
    assert not norm_kernels.applicable(x, nn.BatchNorm2d(4, momentum=None), pool)  # a cumulative average


def counting_blocks(monkeypatch) -> list:
    norm_kernels.available()  # compiled and tried first (on blocks of its own), so that only the network's count
    calls = []
    original = norm_kernels.norm_relu
    monkeypatch.setattr(norm_kernels, "norm_relu", lambda x, bn, pool: calls.append(pool) or original(x, bn, pool))
    return calls


def test_cnn94_trains_through_the_fused_blocks_in_bf16_and_evaluates_through_its_layers(monkeypatch):
    calls = counting_blocks(monkeypatch)
    network = registry.get("cnn94").network(dropout=0.0).train()
    recipe.set_up_network(network, dirac=False, bn_weight=False, bn_momentum=0.4)
    x = torch.rand(4, 28, 28, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        network(x).float().sum().backward()
    assert calls == [True, False, True, False, False]  # stage 1's block, stage 2's two, stage 3's two
    assert all(p.grad is not None for p in network.parameters() if p.requires_grad)
    calls.clear()
    network(x)  # fp32 training
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        network.eval()(x)  # bf16 evaluation: running statistics
    assert calls == []


def test_a_bf16_training_step_matches_pytorchs_layers_closely_and_keeps_the_weights_layout():
    """The fused network is the same function as the plain layers (fused_norm=False): same loss to bf16's
    precision, same state_dict keys (runs saved before the kernels load)."""
    torch.manual_seed(0)
    ours = registry.get("cnn94").network(dropout=0.0).train()
    theirs = registry.get("cnn94").network(dropout=0.0, fused_norm=False).train()
    theirs.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict()) and isinstance(ours.features, fastcnn.Features)
    x, y = torch.rand(32, 28, 28, 1), torch.randint(0, 10, (32,))
    losses = []
    for network in (ours, theirs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(network(x).float(), y)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-2)
    grads = [torch.cat([p.grad.flatten() for p in network.parameters()]) for network in (ours, theirs)]
    assert F.cosine_similarity(grads[0], grads[1], dim=0) > 0.99


def test_a_run_records_whether_the_fused_blocks_could_run(tmp_path):
    """config.json's machine.norm_kernels: True for a bf16 run on the CPU here (numba works), None for fp32."""
    require_real_data()
    for precision, expected in (("bf16", True), ("fp32", None)):
        config = configs.TrainConfig(model="cnn94", epochs=1, limit=600, threads=2, precision=precision)
        loop.fit(config, tmp_path / precision)
        assert runs.read_config(tmp_path / precision)["machine"]["norm_kernels"] is expected
