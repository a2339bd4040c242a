"""The network: Keras shapes, padding and flatten semantics, and the speed tricks against plain forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fmnist.nets import seedcnn
from tests.nets import keras_reference


def test_parameter_count_and_output_shapes():
    network = seedcnn.SeedCNN()
    assert seedcnn.count_parameters(network) == 845_674
    rows = {name.split()[0]: (shape, params) for name, shape, params in seedcnn.summary(network)}
    assert rows["conv1"] == ("(None, 14, 14, 32)", 160)
    assert rows["pool1"] == ("(None, 14, 14, 32)", 0)
    assert rows["conv2"] == ("(None, 7, 7, 64)", 8_256)
    assert rows["pool2"] == ("(None, 7, 7, 64)", 0)
    assert rows["flatten"] == ("(None, 3136)", 0)
    assert rows["dense1"] == ("(None, 256)", 803_072)
    assert rows["dense3"] == ("(None, 10)", 1_290)
    assert network(torch.rand(3, 28, 28, 1)).shape == (3, 10)


@pytest.mark.parametrize("pool", [seedcnn.max_pool_2x2_same, seedcnn.max_pool_2x2_same_reference])
def test_pool_pads_bottom_and_right_only_and_ignores_padding(pool):
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]).reshape(1, 3, 3, 1)
    expected = [[5.0, 6.0, 6.0], [8.0, 9.0, 9.0], [8.0, 9.0, 9.0]]  # windows extend down/right; edges see fewer cells
    assert pool(x).reshape(3, 3).tolist() == expected
    # All negative: a zero in the padding would win if padded cells were not ignored.
    assert pool(-x).reshape(3, 3).tolist() == [[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0], [-7.0, -8.0, -9.0]]


@pytest.mark.parametrize("conv", [seedcnn.conv2x2_stride2, seedcnn.conv2x2_stride2_reference])
def test_stride2_conv_windows_do_not_overlap(conv):
    x = torch.arange(16.0).reshape(1, 4, 4, 1)
    kernel = torch.tensor([1.0, 10.0, 100.0, 1000.0]).reshape(2, 2, 1, 1)  # HWIO: rows then columns
    out = conv(x, kernel, torch.zeros(1)).reshape(2, 2)
    # Window (0, 0) holds x[0,0]=0, x[0,1]=1, x[1,0]=4, x[1,1]=5 -> 0 + 10 + 400 + 5000.
    assert out.tolist() == [[5410.0, 7632.0], [14298.0, 16520.0]]


def test_odd_input_conv_pads_bottom_right():
    x = torch.arange(9.0).reshape(1, 3, 3, 1)
    out = seedcnn.conv2x2_stride2_reference(x, torch.ones(2, 2, 1, 1), torch.zeros(1)).reshape(2, 2)
    assert out.tolist() == [[0 + 1 + 3 + 4, 2 + 5], [6 + 7, 8]]


def test_fast_forms_equal_plain_forms_forward_and_backward():
    torch.manual_seed(0)
    for shape, kernel_shape in (((8, 28, 28, 1), (2, 2, 1, 32)), ((8, 14, 14, 32), (2, 2, 32, 64))):
        x = torch.randn(shape)
        x[:, :5] = 0.0  # ties, as in the background of real images
        kernel, bias = torch.randn(kernel_shape), torch.randn(kernel_shape[-1])
        outputs, grads = [], []
        for conv, pool in (
            (seedcnn.conv2x2_stride2, seedcnn.max_pool_2x2_same),
            (seedcnn.conv2x2_stride2_reference, seedcnn.max_pool_2x2_same_reference),
        ):
            inputs = [t.clone().requires_grad_() for t in (x, kernel, bias)]
            out = pool(torch.relu(conv(*inputs)))
            out.backward(torch.arange(out.numel(), dtype=torch.float32).reshape(out.shape).sin())
            outputs.append(out.detach())
            grads.append([t.grad for t in inputs])
        torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
        for fast, plain in zip(*grads):
            torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)


def keras_layout_weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(0, 0.3, shapes["kernel"]).astype(np.float32), rng.normal(0, 0.1, shapes["bias"]).astype(np.float32))
        for _, _, shapes in seedcnn.LAYERS
    ]


def test_keras_layout_weights_give_keras_outputs():
    weights = keras_layout_weights()
    network = seedcnn.SeedCNN().eval()
    with torch.no_grad():
        for (name, _, _), (kernel, bias) in zip(seedcnn.LAYERS, weights):
            getattr(network, name).kernel.copy_(torch.from_numpy(kernel))
            getattr(network, name).bias.copy_(torch.from_numpy(bias))
    images = np.random.default_rng(1).random((4, 28, 28, 1)).astype(np.float32)
    images[0] = 0.0  # a blank image: every window ties
    with torch.no_grad():
        ours = torch.softmax(network(torch.from_numpy(images)), dim=1).numpy()
    expected = np.stack([keras_reference.seed_cnn(image.astype(np.float64), weights) for image in images])
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_glorot_uniform_init_and_zero_bias():
    torch.manual_seed(0)
    network = seedcnn.SeedCNN()
    for name, _, shapes in seedcnn.LAYERS:
        kernel = getattr(network, name).kernel
        receptive = math.prod(shapes["kernel"][:-2])
        limit = math.sqrt(6 / (receptive * (shapes["kernel"][-2] + shapes["kernel"][-1])))
        assert kernel.abs().max() <= limit
        assert kernel.abs().max() > 0.9 * limit  # fills the range: uniform, not normal or scaled down
        assert torch.count_nonzero(getattr(network, name).bias) == 0
    # Uniform on [-a, a] has standard deviation a / sqrt(3).
    dense = network.dense1.kernel
    assert abs(dense.std().item() - math.sqrt(6 / (3136 + 256)) / math.sqrt(3)) < 1e-3


def test_dropout_only_in_training():
    network = seedcnn.SeedCNN()
    x = torch.rand(4, 28, 28, 1)
    network.eval()
    assert torch.equal(network(x), network(x))
    network.train()
    assert not torch.equal(network(x), network(x))


def test_dropout_zeroes_the_rate_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(1000, 256)
    out = seedcnn.dropout(x, 0.5, training=True)
    assert abs((out == 0).float().mean().item() - 0.5) < 0.01
    assert set(out.unique().tolist()) == {0.0, 2.0}
    assert abs(out.mean().item() - 1.0) < 0.02
    assert seedcnn.dropout(x, 0.5, training=False) is x
