"""The speed tier's pieces against their plain forms: multi-view TTA, alternating flips, BatchNorm settings,
identity initialisation, and the precision chosen from the CPU's features."""
import pytest
import torch
from torch import nn

from fmnist import configs, fastcnn, models, recipe, training


def images(n=16, seed=0):
    return torch.rand(n, 28, 28, 1, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shift", [0, 1, 2])
def test_multi_view_tta_is_the_mean_of_explicit_passes(shift):
    torch.manual_seed(0)
    network = fastcnn.FastCNN().eval()
    x = images(300)  # more than one chunk of views
    with torch.no_grad():
        averaged = models.FlipAveraged(network, shift).eval()(x)
        torch.testing.assert_close(averaged, models.flip_averaged_reference(network, x, shift), rtol=0, atol=1e-5)


def test_a_moved_view_moves_every_pixel_and_fills_with_zeros():
    x = torch.zeros(1, 28, 28, 1)
    x[0, 0, 5], x[0, 27, 27] = 1.0, 2.0
    down_right = models.shift_image(x, 1, 1)
    assert down_right[0, 1, 6, 0] == 1.0 and down_right.sum() == 1.0  # the corner pixel left the image
    assert models.shift_image(x, -1, -1)[0, 26, 26, 0] == 2.0


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
    training.train_one_epoch(network, config.build_optimizer(network), x, torch.zeros(8, dtype=torch.long), config,
                             generator, flips=flips)
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
    assert all(groups[id(bn.bias)]["lr"] == pytest.approx(6.4) and groups[id(bn.bias)]["weight_decay"] == 0
               for bn in norms)
    assert groups[id(network.head.weight)]["lr"] == 0.1 and groups[id(network.head.bias)]["lr_scale"] == 1.0
    assert len(groups) == sum(p.requires_grad for p in network.parameters())


def test_a_scheduled_step_sets_each_group_at_its_scale_and_frozen_scales_stay_at_one():
    torch.manual_seed(0)
    network = fastcnn.FastCNN()
    recipe.freeze_bn_weights(network)
    config = configs.Recipe.for_model("fast-cnn", batch_size=8, bn_bias_lr=64.0, bn_weight=False)
    optimizer = config.build_optimizer(network)
    training.train_one_epoch(network, optimizer, images(8), torch.arange(8), config,
                             torch.Generator().manual_seed(0), rates=[0.01])
    assert sorted({group["lr"] for group in optimizer.param_groups}) == [0.01, pytest.approx(0.64)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in network.modules()
               if isinstance(m, nn.BatchNorm2d))


def test_dirac_initialisation_passes_the_input_through_the_first_filters():
    network = fastcnn.FastCNN()
    recipe.dirac_init(network)
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    x = torch.rand(2, 16, 14, 14)
    out = nn.functional.conv2d(x, convs[1].weight, padding=1)  # 16 -> 32 channels
    torch.testing.assert_close(out[:, :16], x, rtol=0, atol=0)


@pytest.mark.parametrize("flags, model, expected", [
    ({"avx512_bf16", "avx2"}, "cnn94", "bf16"),    # Zen 4/5
    ({"amx_bf16", "amx_tile"}, "cnn94", "bf16"),    # Sapphire Rapids
    ({"avx2", "fma"}, "cnn94", "fp32"),             # Zen 3: bf16 would be emulated
    ({"avx512_bf16"}, "seed-cnn", "fp32"),          # the seed's fused kernels run fp32: bf16 does not pay
])
def test_auto_precision_follows_the_cpu_and_the_model(flags, model, expected):
    assert configs.choose_precision("auto", model, torch.device("cpu"), flags) == expected


def test_an_explicit_precision_is_kept():
    assert configs.choose_precision("fp32", "cnn94", torch.device("cpu"), {"amx_bf16"}) == "fp32"
    assert configs.choose_precision("bf16", "cnn94", torch.device("cpu"), {"avx2"}) == "bf16"
