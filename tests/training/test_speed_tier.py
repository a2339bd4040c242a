"""The speed tier's pieces against their plain forms: multi-view TTA, alternating flips, BatchNorm settings,
identity initialisation, and the precision chosen from the CPU's features."""

import copy

import pytest
import torch
from torch import nn

from fmnist import runs
from fmnist.core import errors
from fmnist.nets import fastcnn, inference
from fmnist.training import checkpoint, configs, loop, recipe, registry
from tests.helpers import require_real_data


def images(n=16, seed=0):
    return torch.rand(n, 28, 28, 1, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shift", [0, 1, 2])
def test_multi_view_tta_is_the_mean_of_explicit_passes(shift):
    torch.manual_seed(0)
    network = fastcnn.FastCNN().eval()
    x = images(300)  # more than one chunk of views
    with torch.no_grad():
        averaged = inference.FlipAveraged(network, shift).eval()(x)
        torch.testing.assert_close(averaged, inference.flip_averaged_reference(network, x, shift), rtol=0, atol=1e-5)


def test_a_moved_view_moves_every_pixel_and_fills_with_zeros():
    x = torch.zeros(1, 28, 28, 1)
    x[0, 0, 5], x[0, 27, 27] = 1.0, 2.0
    down_right = inference.shift_image(x, 1, 1)
    assert down_right[0, 1, 6, 0] == 1.0 and down_right.sum() == 1.0  # the corner pixel left the image
    assert inference.shift_image(x, -1, -1)[0, 26, 26, 0] == 2.0


def test_alternating_flips_mirror_each_image_on_every_other_epoch():
    first, second, third = (recipe.alternating_flips(1000, seed=3, epoch=e) for e in range(3))
    assert torch.equal(second, ~first) and torch.equal(third, first)
    assert 400 < int(first.sum()) < 600  # a random half to start from
    assert not torch.equal(first, recipe.alternating_flips(1000, seed=4, epoch=0))  # the seed decides


def test_an_epoch_mirrors_exactly_the_images_its_flips_name():
    """Through the loop: the augmented images the network sees are the flips' choice, after the shuffle."""
    x, seen = images(8), []
    network = SpyNetwork(seen)
    config = configs.Recipe(batch_size=8, flip=True, alternate_flip=True, optimizer="sgd")
    flips = recipe.alternating_flips(8, seed=0, epoch=1)
    generator = torch.Generator().manual_seed(5)
    order = torch.randperm(8, generator=torch.Generator().manual_seed(5))  # the loop's draw, first from generator
    loop.train_one_epoch(
        network,
        recipe.optimizer_for(network, config),
        x,
        torch.zeros(8, dtype=torch.long),
        config,
        generator,
        plan=loop.EpochPlan(flips=flips),
    )
    expected = torch.where(flips[order][:, None, None, None], x[order].flip(2), x[order])
    assert torch.equal(seen[0], expected)


class SpyNetwork(nn.Module):
    """Records its input; one linear layer so that there is something to train."""

    def __init__(self, seen: list):
        super().__init__()
        self.seen, self.linear = seen, nn.Linear(28 * 28, 10)

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.linear(x.flatten(1))


def test_parameter_groups_scale_batchnorm_biases_and_leave_frozen_scales_out():
    network = fastcnn.FastCNN()
    recipe.freeze_bn_weights(network)
    optimizer = recipe.make_optimizer(network, "sgd", 0.1, 5e-4, bn_bias_lr=64)
    norms = [m for m in network.modules() if isinstance(m, nn.BatchNorm2d)]
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    assert all(id(bn.weight) not in groups and not bn.weight.requires_grad for bn in norms)
    assert all(
        groups[id(bn.bias)]["lr"] == pytest.approx(6.4) and groups[id(bn.bias)]["weight_decay"] == 0 for bn in norms
    )
    assert groups[id(network.head.weight)]["lr"] == 0.1 and groups[id(network.head.bias)]["lr_scale"] == 1.0
    assert len(groups) == sum(p.requires_grad for p in network.parameters())


def test_a_scheduled_step_sets_each_group_at_its_scale_and_frozen_scales_stay_at_one():
    torch.manual_seed(0)
    network = fastcnn.FastCNN()
    recipe.freeze_bn_weights(network)
    config = configs.Recipe.for_model("fast-cnn", batch_size=8, bn_bias_lr=64.0, bn_weight=False)
    optimizer = recipe.optimizer_for(network, config)
    loop.train_one_epoch(
        network,
        optimizer,
        images(8),
        torch.arange(8),
        config,
        torch.Generator().manual_seed(0),
        plan=loop.EpochPlan(rates=[0.01]),
    )
    assert sorted({group["lr"] for group in optimizer.param_groups}) == [0.01, pytest.approx(0.64)]
    assert all(
        torch.equal(m.weight, torch.ones_like(m.weight)) for m in network.modules() if isinstance(m, nn.BatchNorm2d)
    )


def test_dirac_initialisation_passes_the_input_through_the_first_filters():
    network = fastcnn.FastCNN()
    recipe.dirac_init(network)
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    x = torch.rand(2, 16, 14, 14)
    out = nn.functional.conv2d(x, convs[1].weight, padding=1)  # 16 -> 32 channels
    torch.testing.assert_close(out[:, :16], x, rtol=0, atol=0)


@pytest.mark.parametrize(
    "flags, model, expected",
    [
        ({"avx512_bf16", "avx2"}, "cnn94", "bf16"),  # Zen 4/5
        ({"amx_bf16", "amx_tile"}, "cnn94", "bf16"),  # Sapphire Rapids
        ({"avx2", "fma"}, "cnn94", "fp32"),  # Zen 3: bf16 would be emulated
        ({"avx512_bf16"}, "seed-cnn", "fp32"),  # the seed's fused kernels run fp32: bf16 does not pay
    ],
)
def test_auto_precision_follows_the_cpu_and_the_model(flags, model, expected):
    assert loop.choose_precision("auto", model, torch.device("cpu"), flags) == expected


def test_an_explicit_precision_is_kept():
    assert loop.choose_precision("fp32", "cnn94", torch.device("cpu"), {"amx_bf16"}) == "fp32"
    assert loop.choose_precision("bf16", "cnn94", torch.device("cpu"), {"avx2"}) == "bf16"


def test_lookahead_follows_its_formula():
    network = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    lookahead = recipe.Lookahead(network, total_steps=20)
    slow = [t.clone() for t in recipe.averaged_tensors(network)]
    assert len(slow) == 6  # weight, bias, BatchNorm's scale and shift, running mean and variance (not the count)
    for step in range(1, 21):
        with torch.no_grad():
            for t in recipe.averaged_tensors(network):
                t.add_(0.1 * step)  # what an optimizer step would do
        fast = [t.clone() for t in recipe.averaged_tensors(network)]
        lookahead.after_step(network, step)
        if step % 5 and step != 20:  # between averaging steps nothing changes
            assert all(torch.equal(a, b) for a, b in zip(recipe.averaged_tensors(network), fast))
            continue
        decay = 1.0 if step == 20 else 0.95**5 * (step / 20) ** 3
        slow = [decay * s + (1 - decay) * f for s, f in zip(slow, fast)]
        for expected, tensor in zip(slow, recipe.averaged_tensors(network)):
            torch.testing.assert_close(tensor, expected, rtol=1e-6, atol=1e-6)
    assert all(torch.equal(s, t) for s, t in zip(lookahead.slow, recipe.averaged_tensors(network)))


def test_a_checkpoint_carries_the_lookahead_weights():
    config = configs.TrainConfig.for_model("fast-cnn", lookahead=True, epochs=2)
    state = checkpoint.new_state(config, torch.device("cpu"), steps_per_epoch=3)
    for slow in state.lookahead.slow:
        slow.add_(1.0)
    other = checkpoint.new_state(config, torch.device("cpu"), steps_per_epoch=3)
    other.restore(state.checkpoint(), "checkpoint.pt")
    assert all(torch.equal(a, b) for a, b in zip(other.lookahead.slow, state.lookahead.slow))
    damaged = {**state.checkpoint(), "lookahead": state.lookahead.slow[:-1]}
    with pytest.raises(errors.RunError, match=r"checkpoint.pt is damaged.*Lookahead"):
        other.restore(damaged, "checkpoint.pt")


def test_recipe_settings_set_up_the_network():
    config = configs.TrainConfig.for_model("fast-cnn", bn_momentum=0.4, bn_weight=False, dirac=True)
    network = checkpoint.new_state(config, torch.device("cpu"), steps_per_epoch=1).network
    norms = [m for m in network.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.momentum == 0.4 and not m.weight.requires_grad for m in norms)
    assert "BatchNorm momentum 0.4" in config.describe() and "identity-initialised convs" in config.describe()


def test_whitening_filters_match_an_eigen_decomposition_of_patches_gathered_by_a_loop():
    x = images(6, seed=2)
    patches = [x[n, r : r + 3, c : c + 3, 0].reshape(9) for n in range(6) for r in range(26) for c in range(26)]
    stacked = torch.stack(patches).double()  # (6 * 26 * 26, 9)
    centred = stacked - stacked.mean(0)
    covariance = centred.T @ centred / (len(stacked) - 1)
    torch.testing.assert_close(fastcnn.patch_covariance(x), covariance)
    values, vectors = torch.linalg.eigh(covariance)
    filters = fastcnn.whitening_filters(x)
    assert filters.shape == (18, 1, 3, 3) and torch.equal(filters[9:], -filters[:9])
    for k in range(9):  # each filter: an eigenvector over the square root of its eigenvalue (+ ε)
        expected = vectors[:, k] / torch.sqrt(values[k] + fastcnn.WHITENING_EPSILON)
        torch.testing.assert_close(filters[k].reshape(9).double(), expected, rtol=1e-5, atol=1e-5)
    # what the filters are for: the responses to the patches are decorrelated, of unit variance
    responses = centred @ filters[:9].reshape(9, 9).double().T
    whitened = torch.cov(responses.T) * (values + fastcnn.WHITENING_EPSILON) / values  # ε aside
    torch.testing.assert_close(whitened, torch.eye(9, dtype=torch.float64), rtol=1e-4, atol=1e-4)


def test_a_whitening_stem_is_frozen_and_its_bias_trains_only_in_the_first_epochs():
    config = configs.TrainConfig.for_model("whitened-cnn", whiten_bias_epochs=1, dirac=True)
    x = images(64)
    state = checkpoint.new_state(config, torch.device("cpu"), steps_per_epoch=1, images=x)
    stem = state.network.whitening
    torch.testing.assert_close(stem.weight, fastcnn.whitening_filters(x))  # dirac left the frozen filters alone
    assert not stem.weight.requires_grad
    filters = stem.weight.clone()
    for epoch, trains in ((0, True), (1, False)):
        recipe.train_whitening_bias(state.network, epoch < config.whiten_bias_epochs)
        bias = stem.bias.clone()
        loop.train_one_epoch(state.network, state.optimizer, x, torch.arange(64) % 10, config, state.generator)
        assert torch.equal(stem.weight, filters) and (not torch.equal(stem.bias, bias)) == trains


def test_cutout_equals_its_plain_form_and_cuts_only_its_square():
    x = images(40)
    corners = torch.randint(-7, 28, (40, 2), generator=torch.Generator().manual_seed(1))
    masked = x * ~recipe.cutout_masks(corners, 8, 28)[..., None]
    assert torch.equal(masked, recipe.cutout_reference(x, corners, 8))
    ones = torch.ones(1, 28, 28, 1)
    corner = recipe.cutout_reference(ones, torch.tensor([[-3, 26]]), 8)
    assert corner.sum() == 28 * 28 - 5 * 2  # rows 0..4, columns 26..27: only the part on the image
    # through the loop: each image the network sees is its own (after the shuffle) with at most its square cut
    x, labels = images(64), torch.arange(64) % 10
    seen, network = [], SpyNetwork([])
    network.seen = seen
    config = configs.Recipe(batch_size=64, cutout=8, optimizer="sgd")
    loop.train_one_epoch(
        network, recipe.optimizer_for(network, config), x, labels, config, torch.Generator().manual_seed(3)
    )
    order = torch.randperm(64, generator=torch.Generator().manual_seed(3))
    cut = (seen[0] == 0) & (x[order] != 0)
    assert torch.equal(seen[0][~cut], x[order][~cut]) and 0 < cut.sum(dim=(1, 2, 3)).max() <= 64


def test_validating_through_the_tta_only_after_the_last_epoch_watches_the_same_training(tmp_path):
    """--validate-tta last: the epochs before the last are validated on the network alone (one view), the
    last through the model's 6-view TTA, and the weights learned are those of a run validated every epoch."""
    require_real_data()
    quick = {"epochs": 2, "limit": 600, "threads": 2, "precision": "fp32"}
    every = loop.fit(configs.TrainConfig.for_model("cnn94", validate_tta="every", **quick), tmp_path / "every")
    plain = []

    def validate_epoch_weights_alone(row):
        network = registry.CNN94.build(0.0)
        network.load_state_dict(runs.load_checkpoint(tmp_path / "last" / runs.CHECKPOINT)["model"])
        (_, _), (val_x, val_y) = loop.prepare_data(config, torch.device("cpu"))
        plain.append(inference.evaluate(inference.evaluation_form(network, tta=False), val_x, val_y))

    config = configs.TrainConfig.for_model("cnn94", validate_tta="last", **quick)
    last = loop.fit(config, tmp_path / "last", on_epoch=validate_epoch_weights_alone)
    assert (last[0]["val_loss"], last[0]["val_accuracy"]) == plain[0]  # epoch 1: the network alone
    assert last[0]["val_loss"] != every[0]["val_loss"]  # ... which is not its 6 views
    assert [(row["val_loss"], row["val_accuracy"]) for row in last[1:]] == [
        (row["val_loss"], row["val_accuracy"]) for row in every[1:]
    ]  # the last epoch: through its TTA
    weights = [runs.load_weights(tmp_path / name / runs.WEIGHTS)[0] for name in ("every", "last")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    with pytest.raises(ValueError, match="validate_tta"):
        configs.TrainConfig(validate_tta="sometimes")


@pytest.mark.parametrize("shape", [(16, 9), (64, 576), (288, 32)])
def test_orthogonalised_keeps_the_singular_vectors_and_evens_out_the_values(shape):
    matrix = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u, _, vt = torch.linalg.svd(matrix, full_matrices=False)
    in_its_basis = u.T @ recipe.orthogonalised(matrix) @ vt.T  # diagonal: the same U and V
    values = torch.diagonal(in_its_basis)
    torch.testing.assert_close(in_its_basis, torch.diag(values), rtol=0, atol=1e-6)
    assert values.min() > 0.6 and values.max() < 1.25  # every direction at about the same size


def test_muon_steps_the_conv_filters_by_its_formula_and_the_rest_by_sgd():
    torch.manual_seed(0)
    network = fastcnn.FastCNN()
    reference = copy.deepcopy(network)
    optimizer = recipe.make_optimizer(network, "muon", 0.1, 5e-4, muon_lr=0.5)
    sgd = recipe.make_optimizer(reference, "sgd", 0.1, 5e-4)  # updates the other parameters as Muon must
    filters = [p for p in reference.parameters() if p.ndim == 4]
    buffers = [torch.zeros_like(p) for p in filters]
    for step in range(2):
        x, y = images(32, seed=step), torch.arange(32) % 10
        for net in (network, reference):
            nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
        with torch.no_grad():  # Muon, written out: momentum, Nesterov, renormalise, orthogonalised step
            for p, buffer in zip(filters, buffers):
                buffer.mul_(recipe.MUON_MOMENTUM).add_(p.grad)
                direction = (p.grad + recipe.MUON_MOMENTUM * buffer).reshape(len(p), -1)
                p.mul_(len(p) ** 0.5 / p.norm()).sub_(0.05 * recipe.orthogonalised(direction).view_as(p))
                p.grad = None
        sgd.step()
        for net in (network, reference):
            net.zero_grad(set_to_none=True)
    for (name, mine), theirs in zip(network.named_parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6, msg=name)
    muon = [group for group in optimizer.param_groups if group.get("muon")]
    assert len(muon) == 1 and muon[0]["weight_decay"] == 0 and muon[0]["lr"] == pytest.approx(0.05)
    assert {id(p) for p in muon[0]["params"]} == {id(p) for p in network.parameters() if p.ndim == 4}


@pytest.mark.parametrize("name", ["fast-cnn", "whitened-cnn", "res95"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_pooling_before_the_relu_is_the_same_network_bit_for_bit(name, precision):
    """fastcnn.pool_first against the plain order (ReLU, then pool): the same logits and the same gradients."""
    torch.manual_seed(0)
    network = registry.get(name).build(0.0).train()
    network.features.fused = False  # PyTorch's layers in both (the fused blocks: test_norm_kernels.py)
    kinds = [type(layer) for layer in network.features]
    assert any(kinds[i : i + 2] == [nn.MaxPool2d, nn.ReLU] for i in range(len(kinds))), kinds  # pools first
    plain = copy.deepcopy(network)
    plain.features = nn.Sequential(*fastcnn.pool_first(plain.features, first=False))
    assert not any([type(a), type(b)] == [nn.MaxPool2d, nn.ReLU] for a, b in zip(plain.features, plain.features[1:]))
    x, y = images(64), torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(1))
    results = []
    for form in (network, plain):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = form(x)
        nn.functional.cross_entropy(logits.float(), y).backward()
        results.append([logits.detach()] + [p.grad for p in form.parameters() if p.requires_grad])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
    assert network.state_dict().keys() == plain.state_dict().keys()  # runs saved before the reordering load
