"""The recipe's pieces (recipe.py) against their plain forms and their definitions."""

import dataclasses
import itertools

import pytest
import torch

import fmnist
from fmnist.data import fashion
from fmnist.nets import inference
from fmnist.training import configs, loop, recipe, registry
from tests.helpers import require_real_data


def images(n=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 28, 28, 1, generator=generator)


def test_translate_equals_its_plain_form():
    x = images()
    for shift in (1, 2, 3):
        offsets = torch.randint(0, 2 * shift + 1, (len(x), 2), generator=torch.Generator().manual_seed(shift))
        assert torch.equal(recipe.translate(x, offsets, shift), recipe.translate_reference(x, offsets, shift))


def test_translate_moves_content_by_the_drawn_offset():
    x = torch.zeros(2, 28, 28, 1)
    x[:, 10, 20] = 1.0
    offsets = torch.tensor([[2, 2], [0, 4]])  # shift 2: (0, 0) and (-2 rows, +2 columns)
    out = recipe.translate(x, offsets, 2)
    assert torch.equal(out[0], x[0])
    assert out[1, 8, 22, 0] == 1.0 and out[1].sum() == 1.0


def test_augment_keeps_shapes_and_draws_mirrors_or_originals():
    x = images()
    generator = torch.Generator().manual_seed(1)
    out = recipe.augment(x, generator, flip=True, shift=0)
    assert out.shape == x.shape and out.dtype == x.dtype
    mirrored = [torch.equal(o, i.flip(1)) for o, i in zip(out, x)]
    assert all(m or torch.equal(o, i) for m, o, i in zip(mirrored, out, x))
    assert 0 < sum(mirrored) < len(x)  # both kinds drawn


def test_augment_without_augmentation_draws_nothing_and_keeps_images():
    """The seed's recipe: its shuffling stream and images stay exactly the report's."""
    x, generator = images(), torch.Generator().manual_seed(1)
    before = generator.get_state()
    assert recipe.augment(x, generator, flip=False, shift=0) is x
    assert torch.equal(generator.get_state(), before)


@pytest.mark.parametrize(
    "flip, shift, cutout, given",
    [
        (True, 1, 0, False),
        (True, 2, 0, True),
        (False, 0, 0, False),
        (False, 3, 0, False),
        (True, 1, 8, True),
        (True, 8, 0, False),
    ],
)
def test_shuffled_augmented_equals_augment_after_the_gather(flip, shift, cutout, given):
    """The one-pass form (on the CPU: numba's gather, flip and shift) gives augment(images[order]) bit for bit
    and leaves the generator where augment leaves it; a subset of the images, as well as a permutation."""
    x = images(96, seed=2)
    for order in (torch.randperm(96, generator=torch.Generator().manual_seed(3)), torch.tensor([5, 0, 95, 5, 17])):
        mirrored = (torch.arange(len(order)) % 3 == 0) if given else None
        plain_generator, fused_generator = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        plain = recipe.augment(x[order], plain_generator, flip, shift, mirrored, cutout)
        fused = recipe.shuffled_augmented(x, order, fused_generator, flip, shift, mirrored, cutout)
        assert torch.equal(fused, plain)
        assert torch.equal(fused, x[order]) == (not (flip or shift or cutout))  # augmented where asked
        assert torch.equal(fused_generator.get_state(), plain_generator.get_state())


def test_shuffled_augmented_takes_the_plain_form_where_the_kernel_does_not_apply():
    x, order = images(16).double(), torch.randperm(16)  # float64: not the kernel's
    assert not recipe.fused.gathers(x)
    plain = recipe.augment(x[order], torch.Generator().manual_seed(1), True, 1)
    assert torch.equal(recipe.shuffled_augmented(x, order, torch.Generator().manual_seed(1), True, 1), plain)


def test_an_epoch_with_the_whole_recipe_runs_and_sets_each_steps_rate():
    torch.manual_seed(0)
    network = registry.get("seed-cnn").build(0.0)
    optimizer = recipe.optimizer_for(network, configs.TrainConfig(optimizer="sgd", weight_decay=5e-4))
    x, y = images(32), torch.arange(32) % 10
    config = configs.TrainConfig(batch_size=16, flip=True, shift=2, label_smoothing=0.1)
    loss, accuracy = loop.train_one_epoch(
        network, optimizer, x, y, config, torch.Generator().manual_seed(0), plan=loop.EpochPlan(rates=[0.05, 0.01])
    )
    assert torch.isfinite(loss) and 0 <= accuracy <= 1
    assert {group["lr"] for group in optimizer.param_groups} == {0.01}  # the last step's


def test_one_cycle_rises_to_its_peak_and_ends_at_zero():
    total, peak = 100, 0.4
    rates = [configs.learning_rate(step, total, peak, "onecycle", 0.2) for step in range(total)]
    assert rates[19] == pytest.approx(peak) and max(rates) == pytest.approx(peak)
    assert rates[0] == pytest.approx(peak / 20) and rates[-1] == 0.0
    assert all(a <= b for a, b in itertools.pairwise(rates[:20]))  # up to the peak
    assert all(a >= b for a, b in itertools.pairwise(rates[19:]))  # then down
    assert {configs.learning_rate(step, total, peak, "constant", 0.2) for step in range(total)} == {peak}


def test_the_schedule_continues_across_epochs():
    config = configs.TrainConfig(optimizer="sgd", schedule="onecycle", warmup=0.25, epochs=4, learning_rate=1.0)
    schedule = config.schedule_of(steps_per_epoch=10)
    peak = configs.short_run_scale(40)  # 40 steps: a quick try's peak
    assert 0 < peak < 1 and schedule(9) == pytest.approx(peak) and schedule(39) == 0.0
    long = config.schedule_of(steps_per_epoch=configs.FULL_PEAK_STEPS)  # at full length: the recipe's own peak
    assert long(configs.FULL_PEAK_STEPS - 1) == pytest.approx(1.0)
    assert configs.TrainConfig().schedule_of(10) is None  # the seed's: nothing set per step


def test_weight_decay_applies_to_weights_only():
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    decayed, free = recipe.parameter_groups(network, 5e-4)
    assert decayed["weight_decay"] == 5e-4 and free["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in free["params"])
    assert len(decayed["params"]) + len(free["params"]) == len(list(network.parameters()))


@pytest.mark.parametrize(
    "bad, rule",
    [
        ({"optimizer": "rmsprop"}, "optimizer must be one of adam, sgd, adamw, muon"),
        ({"schedule": "cosine"}, "schedule must be one of constant, onecycle"),
        ({"weight_decay": 0.1}, "Keras's Adam takes no weight decay"),
        ({"shift": 9}, r"shift and tta_shift must be 0\.\.8 pixels"),
        ({"label_smoothing": 1.0}, r"label smoothing must be in \[0, 1\)"),
        ({"flip": 1}, "flip must be bool, got 1"),
    ],
)
def test_a_bad_recipe_is_a_value_error_naming_its_rule(bad, rule):
    with pytest.raises(ValueError, match=rule):
        configs.TrainConfig(**bad)


@pytest.mark.parametrize("name", list(registry.REGISTRY))
def test_flip_tta_is_the_mean_of_the_two_passes(name):
    torch.manual_seed(0)
    network = registry.get(name).build(0.0).eval()
    averaged = inference.FlipAveraged(network).eval()
    x = images(inference.TTA_ROWS // 2 + 8)  # more than one chunk of two views
    with torch.no_grad():
        torch.testing.assert_close(averaged(x), inference.flip_averaged_reference(network, x), rtol=0, atol=1e-5)
    assert averaged.state_dict().keys() == network.state_dict().keys()
    averaged.train()  # training sees the network alone
    assert torch.equal(averaged(x), network(x))


def test_a_shortened_one_cycle_keeps_its_shape_at_a_peak_its_steps_can_take():
    recipe = configs.Recipe.for_model("cnn94")
    full = recipe.steps_per_epoch(48_000)
    assert max(recipe.epoch_rates(0, full) + recipe.epoch_rates(recipe.epochs - 1, full)) <= recipe.learning_rate
    peak_of = lambda epochs, steps: max(  # noqa: E731
        rate for epoch in range(epochs) for rate in dataclasses.replace(recipe, epochs=epochs).epoch_rates(epoch, steps)
    )
    assert peak_of(recipe.epochs, full) == pytest.approx(recipe.learning_rate, rel=1e-3)  # its own length: untouched
    short = peak_of(1, 19)  # --epochs 1 --limit 6000: 19 steps of 256
    assert short == pytest.approx(recipe.learning_rate * (19 / configs.FULL_PEAK_STEPS) ** 0.5, rel=0.05)
    rates = dataclasses.replace(recipe, epochs=1).epoch_rates(0, 19)
    assert rates.index(max(rates)) == round(recipe.warmup * 19) - 1 and rates[-1] == 0  # warm-up, then down to 0


def test_a_quick_try_takes_its_models_quick_settings_and_a_full_run_its_recipe():
    spec = registry.get("res95")
    assert spec.quick and not registry.get(registry.DEFAULT).quick  # the report's recipe at any length
    quick = configs.TrainConfig.for_model("res95", epochs=1, limit=6000)  # 38 steps
    assert quick.quick_try and quick.quick_settings() == spec.quick
    assert all(getattr(quick, key) == value for key, value in spec.quick.items())
    full = configs.TrainConfig.for_model("res95")
    assert not full.quick_try and full.quick_settings() == {} and full.recipe == spec.recipe
    chosen = configs.TrainConfig.for_model("res95", epochs=1, limit=6000, learning_rate=0.01)  # a flag wins
    assert chosen.learning_rate == 0.01 and "learning_rate" not in chosen.quick_settings()
    assert configs.TrainConfig.for_model("res95", epochs=2).quick_try  # 2 x 375 steps: under FULL_PEAK_STEPS
    assert not configs.TrainConfig.for_model("res95", epochs=3).quick_try  # 3 x 375: over it


@pytest.mark.slow
def test_a_quick_try_of_the_speed_tier_gives_a_sensible_model(tmp_path):
    """`fmnist train --model cnn94 --epochs 1 --limit 6000`, a user's first minute: a model, not junk."""
    require_real_data()
    loop.fit(configs.TrainConfig.for_model("cnn94", epochs=1, limit=6000, threads=2), tmp_path / "run")
    dataset = fashion.load()
    images, labels = dataset.test_images[:2000], dataset.test_labels[:2000]  # 0.70: far below the ~0.78 it reaches
    predicted = fmnist.open_run(tmp_path / "run").predict(images).classes  # what evaluate counts
    assert (predicted == labels).mean() >= 0.70
