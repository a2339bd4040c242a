"""The fused CPU kernels against the plain PyTorch forms they replace: bit for bit, forward and backward."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from fmnist.nets import inference, seedcnn
from fmnist.nets.kernels import fused


def to_windows(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) -> (N*H/2*W/2, 4C): 2x2 stride-2 windows in (kh, kw, C) order, the plain way."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, 4 * c)


def activations(shape, seed=0):
    """Random pre-activations with the ties real images make: zeros, repeated values, all-negative windows."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=generator)
    z[:, :2] = 0.0
    z[:, 2:4] = z[:, 2:4].round()
    z[-1] = -z[-1].abs() - 1.0  # a whole image whose every window is negative: no gradient at all
    return z


@pytest.mark.parametrize(
    "shape, patches",
    [
        ((6, 14, 14, 32), True),
        ((6, 14, 14, 32), False),
        ((5, 7, 7, 64), False),
        ((3, 5, 4, 3), False),
        ((2, 1, 1, 2), False),
    ],
)
def test_bias_relu_pool_is_bit_identical_to_pytorch_forward_and_backward(shape, patches):
    z, bias = activations(shape), torch.randn(shape[-1])
    fused_inputs = [t.clone().requires_grad_() for t in (z, bias)]
    plain_inputs = [t.clone().requires_grad_() for t in (z, bias)]
    out = fused.bias_relu_pool(*fused_inputs, patches=patches)
    plain = seedcnn.max_pool_2x2_same_reference(torch.relu(plain_inputs[0] + plain_inputs[1]))
    plain = to_windows(plain) if patches else plain
    assert out.shape == plain.shape and torch.equal(out, plain)
    grad = torch.randn(out.shape)
    out.backward(grad)
    plain.backward(grad)
    assert torch.equal(fused_inputs[0].grad, plain_inputs[0].grad)  # same winners, same summation order
    torch.testing.assert_close(fused_inputs[1].grad, plain_inputs[1].grad)  # a sum: order may differ


def test_patches_need_even_sizes():
    with pytest.raises(ValueError, match="even"):
        fused.bias_relu_pool(torch.zeros(1, 7, 7, 4), torch.zeros(4), patches=True)


def test_space_to_depth_gives_the_convolution_windows():
    x = torch.rand(3, 28, 28, 1)
    assert torch.equal(fused.space_to_depth(x), to_windows(x))
    with pytest.raises(ValueError, match="an even-sized input that needs no gradient"):
        fused.space_to_depth(x.requires_grad_())


def test_fused_network_equals_pytorch_network_in_training():
    """Same weights, dropout off: outputs and every parameter gradient agree (float rounding aside)."""
    torch.manual_seed(0)
    networks = {name: seedcnn.SeedCNN(dropout=0.0, implementation=name) for name in seedcnn.IMPLEMENTATIONS}
    for network in networks.values():
        network.load_state_dict(networks["reference"].state_dict())
    x, y = torch.rand(16, 28, 28, 1), torch.randint(0, 10, (16,))
    x[:4] = 0.0  # blank images: every pooling window ties
    results = {}
    for name, network in networks.items():
        loss = F.cross_entropy(network(x), y)
        loss.backward()
        results[name] = [loss.detach()] + [p.grad for p in network.parameters()]
    for name in ("fused", "torch"):
        for ours, plain in zip(results[name], results["reference"]):
            torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-6)


def test_fused_kernels_are_used_only_where_they_apply():
    x = torch.rand(2, 28, 28, 1)
    assert fused.applicable(x)
    assert not fused.applicable(x.double())
    network = seedcnn.SeedCNN()
    features = network.features(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # bf16 training: the convolution blocks stay float32 (exactly the fp32 features), dense layers bf16.
        assert torch.equal(network.features(x), features)
        assert network(x).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="implementation"):
        seedcnn.SeedCNN(implementation="fast")


def test_kernels_are_safe_to_call_from_many_threads():
    """The HTTP server predicts on a thread pool: concurrent calls must neither crash nor mix results."""
    network = seedcnn.SeedCNN().eval()
    batches = [torch.rand(64, 28, 28, 1, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    expected = [inference.predict_probabilities(network, batch) for batch in batches]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            got = list(pool.map(lambda batch: inference.predict_probabilities(network, batch), batches))
            for ours, reference in zip(got, expected):
                assert torch.equal(ours, reference)


def run_python(program: str) -> str:
    """Run `program` in a fresh interpreter (first-use behaviour is per process); its stdout."""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_first_use_inside_inference_mode_still_enables_the_kernels():
    """A fresh process whose first forward pass is an evaluation (inference mode) must get the kernels."""
    program = (
        "import torch, warnings\n"
        "warnings.simplefilter('error')\n"
        "from fmnist.nets import seedcnn\nfrom fmnist.nets.kernels import fused\n"
        "with torch.inference_mode():\n"
        "    seedcnn.SeedCNN().eval()(torch.rand(2, 28, 28, 1))\n"
        "print(fused.available())\n"
    )
    assert run_python(program).strip() == "True"


def test_without_numba_the_network_falls_back_to_pytorch_with_a_warning():
    """numba often lags new NumPy releases: fmnist must still import and compute the same outputs."""
    program = (
        "import sys, warnings, torch\n"
        "sys.modules['numba'] = None  # makes `import numba` raise ImportError\n"
        "from fmnist.nets import seedcnn\nfrom fmnist.nets.kernels import fused\n"
        "torch.manual_seed(0)\n"
        "network = seedcnn.SeedCNN().eval()\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    out = network(torch.rand(3, 28, 28, 1))\n"
        "warned = any('numba does not import' in str(w.message) for w in caught)\n"
        "print(fused.available(), out.shape[1], warned)\n"
    )
    assert run_python(program).split() == ["False", "10", "True"]


def test_the_first_kernel_call_keeps_the_thread_count_asked_for():
    """numba's threading layer, launched by its first call in a process, sets the OpenMP pool it shares with
    torch to all of numba's threads: `--threads 1` (or fewer threads under load) must stay what it was."""
    probe = (
        "import fmnist, torch\n"
        "from fmnist.core import machine\n"
        "from fmnist.nets import seedcnn\n"
        "machine.set_up(1)\n"
        "network = seedcnn.SeedCNN()\n"
        "network(torch.rand(4, 28, 28, 1)).sum().backward()\n"
        "print(torch.get_num_threads())\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]
