"""Dynamic batching: images of concurrent callers go through the model together, each caller gets its rows."""

from __future__ import annotations

import numpy as np
import pytest

from fmnist.nets import inference
from fmnist.serving import batching


@pytest.mark.slow
def test_batched_rows_equal_each_image_predicted_alone(trained_run, real_dataset):
    network = inference.load_model(trained_run)
    images = real_dataset.test_images[:50]
    # The thread waits (up to a minute) until 50 images are queued: one model call for all fifty jobs.
    sizes: list[int] = []
    batcher = batching.DynamicBatcher(
        lambda x: inference.checked_probabilities(network, x), max_batch=50, max_delay=60, on_batch=sizes.append
    )
    try:
        futures = [batcher.submit(images[i : i + 1]) for i in range(50)]
        rows = [future.result(timeout=120) for future in futures]
    finally:
        batcher.close()
    assert sizes == [50]
    for i, row in enumerate(rows):
        alone = inference.checked_probabilities(network, images[i : i + 1])
        assert row.shape == (1, 10) and np.abs(row - alone).max() <= 1e-6  # kernels differ with the batch size
        assert row.argmax() == alone.argmax()


def test_jobs_larger_than_a_batch_and_errors_reach_their_callers():
    calls = []

    def model(images):
        calls.append(len(images))
        if (images == 255).any():
            raise ValueError("damaged")
        return np.repeat(images.reshape(len(images), -1)[:, :1].astype(np.float32), 10, axis=1)

    batcher = batching.DynamicBatcher(model, max_batch=4)
    try:
        big = np.arange(6, dtype=np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8)
        assert batcher.submit(big).result(timeout=60)[:, 0].tolist() == list(range(6))  # alone, whole
        with pytest.raises(ValueError, match="damaged"):
            batcher.submit(np.full((1, 28, 28), 255, np.uint8)).result(timeout=60)
        assert batcher.submit(big[:2]).result(timeout=60).shape == (2, 10)  # the thread serves on
    finally:
        batcher.close()
    assert calls[0] == 6 and max(calls[1:]) <= 4
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(big)
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        batching.DynamicBatcher(model, max_batch=0)
