"""Fused CPU kernels (numba) for the convolution blocks: bias + ReLU + Keras "same" 2x2 stride-1 pooling
(and, at the end, an epoch's shuffle, flips and shifts in one pass: `gather_flip_shift`).

Why: on a CPU the network's arithmetic is in its matmuls; everything between them is memory passes.
PyTorch's eager form of one block (addmm broadcasting the bias, ReLU, a -inf pad, max_pool2d writing
int64 indices, the permute copy that makes the next convolution's windows) reads and writes the
14x14x32 activations about ten times, and its backward as often again. Here a block is:

    z = windows @ kernel                      (PyTorch's matmul, no bias)
    out = bias_relu_pool(z, bias)             (one pass: bias, ReLU, pool, 1-byte winner codes)

and the backward is one pass too: each input gathers the gradients of the (up to four) windows whose
first maximum it is, in the order PyTorch's max_pool2d backward adds them, so the result is
bit-identical to `max_pool_2x2_same(relu(z + bias))`. The first block can write its output straight in
the second convolution's window order ("patches"), which removes the permute copy and its backward.

Pooling semantics (Keras "same", stride 1, pool 2x2): window (i, j) covers (i, j), (i, j+1), (i+1, j),
(i+1, j+1); cells past the bottom/right edge are padding that never wins. Ties go to the first cell in
that order, as in PyTorch and TensorFlow. `bias_relu_pool` handles float32 CPU tensors (under bf16
autocast the model runs the blocks in float32); the model uses the PyTorch forms elsewhere (CUDA,
ONNX tracing).
"""

from __future__ import annotations

import functools
import threading
import warnings

import numpy as np
import torch

UNAVAILABLE: str | None = None  # why the kernels cannot run here, where they cannot
try:
    import numba
except ImportError as exc:  # numba often lags a new NumPy or Python: then PyTorch's forms run
    numba, UNAVAILABLE = None, f"numba does not import: {exc}"
else:
    # A thread-safe threading layer (OpenMP or TBB): the HTTP server predicts on several threads, and
    # numba's fallback layer ("workqueue") aborts the process on concurrent parallel calls.
    numba.config.THREADING_LAYER = "threadsafe"

ZERO = np.float32(0.0)
NO_WINNER = np.int8(4)  # the window's maximum is <= 0: ReLU makes it 0 and no gradient flows


def _jit(**options):
    """numba.njit, or the plain Python function where numba is missing (then it is never called)."""
    return numba.njit(cache=True, **options) if numba else (lambda function: function)


kernel = _jit(parallel=True, boundscheck=False, nogil=True)
inline = _jit(inline="always")
serial = _jit(boundscheck=False, nogil=True)
prange = numba.prange if numba else range


@inline
def _row(b, i, j, h, w, patches):
    """Row of activation (b, i, j) in the output: NHWC order, or the next conv's 2x2 windows."""
    if patches:  # (N, H/2, W/2, 2, 2, C): window (i//2, j//2), offset (i%2, j%2) inside it
        return (((b * (h // 2) + i // 2) * (w // 2) + j // 2) * 2 + i % 2) * 2 + j % 2
    return (b * h + i) * w + j


@kernel
def _forward(z, bias, out, code, patches):
    """out[row(b,i,j)] = max(0, max of window (i,j) of z + bias); code = which cell won (0-3) or 4."""
    n, h, w, c = z.shape
    for b in prange(n):
        for i in range(h):
            i1 = min(i + 1, h - 1)  # at the edge the window repeats a cell: a repeat never wins a tie
            for j in range(w):
                j1 = min(j + 1, w - 1)
                row = _row(b, i, j, h, w, patches)
                # Plain element indexing, no row views: a view per (b, i, j) costs more than its 32 channels.
                for k in range(c):  # channels are contiguous: this loop vectorizes
                    a0, a1 = z[b, i, j, k] + bias[k], z[b, i, j1, k] + bias[k]
                    a2, a3 = z[b, i1, j, k] + bias[k], z[b, i1, j1, k] + bias[k]
                    m01 = a0 if a0 >= a1 else a1
                    m23 = a2 if a2 >= a3 else a3
                    m = m01 if m01 >= m23 else m23
                    winner = np.int8(2) if a2 == m else np.int8(3)
                    winner = np.int8(1) if a1 == m else winner
                    winner = np.int8(0) if a0 == m else winner
                    code[b, i, j, k] = winner if m > ZERO else NO_WINNER
                    out[row, k] = m if m > ZERO else ZERO


@kernel
def _backward(code, grad, dz, patches):
    """dz[b,i,j] = sum of grad over the windows (i-1..i, j-1..j) whose winner is cell (i, j)."""
    n, h, w, c = code.shape
    for b in prange(n):
        for i in range(h):
            for j in range(w):
                up, left = max(i - 1, 0), max(j - 1, 0)
                # (i, j) is cell 0 of window (i, j), cell 1 of (i, j-1), 2 of (i-1, j), 3 of (i-1, j-1);
                # a window past the top/left edge asks for code -1, which no cell has.
                want1, want2, want3 = (1 if j else -1), (2 if i else -1), (3 if i and j else -1)
                r0, r1 = _row(b, i, j, h, w, patches), _row(b, i, left, h, w, patches)
                r2, r3 = _row(b, up, j, h, w, patches), _row(b, up, left, h, w, patches)
                for k in range(c):  # summed in max_pool2d's backward order: bit-identical results
                    v0, v1, v2, v3 = grad[r0, k], grad[r1, k], grad[r2, k], grad[r3, k]  # loads outside selects
                    s = v3 if code[b, up, left, k] == want3 else ZERO
                    s += v2 if code[b, up, j, k] == want2 else ZERO
                    s += v1 if code[b, i, left, k] == want1 else ZERO
                    s += v0 if code[b, i, j, k] == 0 else ZERO
                    dz[b, i, j, k] = s


@kernel
def _space_to_depth(x, out):
    """(N, H, W, C) -> (N, H/2, W/2, 2, 2, C): the 2x2 stride-2 windows as rows (the first conv's input)."""
    n, h, w, c = x.shape
    for b in prange(n):
        for i in range(h):
            for j in range(w):
                for k in range(c):
                    out[b, i // 2, j // 2, i % 2, j % 2, k] = x[b, i, j, k]


@kernel
def _gather_flip_shift(images, order, mirrored, moves, out):
    """out[b] = images[order[b]], mirrored where mirrored[b], moved by moves[b] = (dy, dx), zeros filling in:
    out[b, i, j] = source[i - dy, j - dx]."""
    n, h, w, c = out.shape
    for b in prange(n):
        source, dy, dx = order[b], moves[b, 0], moves[b, 1]
        for i in range(h):
            for j in range(w):
                si, sj = i - dy, j - dx
                inside = 0 <= si < h and 0 <= sj < w
                si, sj = min(max(si, 0), h - 1), min(max(sj, 0), w - 1)  # a cell to read either way
                sj = w - 1 - sj if mirrored[b] else sj
                for k in range(c):
                    out[b, i, j, k] = images[source, si, sj, k] if inside else ZERO


_numba_threads = threading.local()  # numba's thread count is the calling thread's own


def use_torch_threads() -> None:
    """Numba's pool follows torch's thread count (torchrun sets 1 per process, --threads sets N). Set only on
    a change: a step calls this before each fused pass, and numba's setter costs ~10 µs there, its code
    evicted from the caches by the pass before. numba's parallel regions run on PyTorch's own OpenMP pool:
    threads.py says why."""
    count = torch.get_num_threads()
    if getattr(_numba_threads, "count", None) != count:
        numba.set_num_threads(max(1, min(count, numba.config.NUMBA_NUM_THREADS)))
        if torch.get_num_threads() != count:  # numba's first call launched its threading layer, which set the
            torch.set_num_threads(count)  # shared OpenMP pool to all its threads: torch's count again
        _numba_threads.count = count


class BiasReluPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, bias: torch.Tensor, patches: bool) -> torch.Tensor:
        n, h, w, c = z.shape
        rows = n * h * w
        out = torch.empty(rows, c)
        code = torch.empty(z.shape, dtype=torch.int8)  # 1 byte per activation instead of int64 indices
        use_torch_threads()
        _forward(z.detach().numpy(), bias.detach().numpy(), out.numpy(), code.numpy(), patches)
        ctx.save_for_backward(code)
        ctx.patches = patches
        return out.view(rows // 4, 4 * c) if patches else out.view(n, h, w, c)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (code,) = ctx.saved_tensors
        c = code.shape[-1]
        grad = grad.contiguous().view(-1, c)  # rows in the forward's output order
        dz = torch.empty(code.shape)
        use_torch_threads()
        _backward(code.numpy(), grad.numpy(), dz.numpy(), ctx.patches)
        return dz, dz.sum((0, 1, 2)), None


@functools.cache
def available() -> bool:
    """Whether numba can compile and run the kernels here (else PyTorch's forms run).

    Runs each kernel once on a tiny input: the first time on a machine this compiles them (10-15 s;
    numba caches the machine code beside this file or in its user cache), later ~0.5 s. The first
    call may come from inside inference mode (evaluation), so gradients are switched on here.
    """
    if UNAVAILABLE:
        warnings.warn(
            f"fmnist: the fused CPU kernels are unavailable ({UNAVAILABLE}); using PyTorch's forms", stacklevel=2
        )
        return False
    try:
        with torch.inference_mode(False), torch.enable_grad():
            z = torch.zeros(1, 2, 2, 1, requires_grad=True)
            bias_relu_pool(z, torch.zeros(1), patches=True).sum().backward()
            space_to_depth(z.detach())
            gather_flip_shift(
                z.detach(),
                torch.zeros(1, dtype=torch.long),
                torch.ones(1, dtype=torch.bool),
                torch.ones(1, 2, dtype=torch.long),
            )
        return True
    except Exception as exc:  # numba's errors have no common base; any failure means "use PyTorch"
        warnings.warn(f"fmnist: the fused CPU kernels are unavailable ({exc}); using PyTorch's forms", stacklevel=2)
        return False


def applicable(x: torch.Tensor) -> bool:
    """Whether the fused kernels can take this input: float32 on the CPU, needing no gradient of its
    own (the first block's windows have no backward), outside ONNX/JIT tracing."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not x.requires_grad
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
        and available()
    )


def bias_relu_pool(z: torch.Tensor, bias: torch.Tensor, patches: bool = False) -> torch.Tensor:
    """max_pool_2x2_same(relu(z + bias)) for z (N, H, W, C) float32 on the CPU, fused.

    Returns (N, H, W, C); with `patches`, the same values as (N*H/2*W/2, 4*C): each row one 2x2
    stride-2 window in (kh, kw, C) order, ready for the next convolution's matmul (H, W even).
    """
    if patches and (z.shape[1] % 2 or z.shape[2] % 2):
        raise ValueError(f"patches need an even height and width, got {tuple(z.shape)}")
    return BiasReluPool.apply(z.contiguous(), bias, patches)


def gathers(images: torch.Tensor) -> bool:
    """Whether `gather_flip_shift` can take these images: float32 NHWC on the CPU, the kernels working here."""
    return images.device.type == "cpu" and images.dtype == torch.float32 and images.dim() == 4 and available()


def gather_flip_shift(
    images: torch.Tensor, order: torch.Tensor, mirrored: torch.Tensor, moves: torch.Tensor
) -> torch.Tensor:
    """(len(order), H, W, C): images[order], each mirrored where `mirrored` says, then moved by `moves`
    (N, 2) = (dy, dx) pixels with zeros filling in (recipe.augment's flip and translate), in one pass."""
    out = torch.empty(len(order), *images.shape[1:])
    use_torch_threads()
    _gather_flip_shift(images.contiguous().numpy(), order.numpy(), mirrored.numpy(), moves.numpy(), out.numpy())
    return out


def space_to_depth(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) -> (N*H/2*W/2, 4*C) windows of the 2x2 stride-2 convolution (no gradient)."""
    n, h, w, c = x.shape
    if x.requires_grad or h % 2 or w % 2:
        raise ValueError("space_to_depth takes an even-sized input that needs no gradient")
    out = torch.empty(n, h // 2, w // 2, 2, 2, c)
    use_torch_threads()
    _space_to_depth(x.contiguous().numpy(), out.numpy())
    return out.view(n * (h // 2) * (w // 2), 4 * c)
