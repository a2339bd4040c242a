"""Dynamic batching: images of concurrent requests go through the model together.

As TorchServe's `batch_size`/`max_batch_delay`, Triton's dynamic batcher and Ray Serve's `@serve.batch`:
callers `submit` arrays of images and get a Future; one thread takes whatever is queued (up to
`max_batch` images, waiting at most `max_delay` seconds for more once the first has arrived), runs the
model once on the lot and hands each caller its rows. Under load a batch forms while the previous one
runs, so throughput grows with the load; alone, a request waits only `max_delay`. The queue's depth is
bounded by the caller (serve.py admits work before submitting it).

Rows of a batch equal the same images predicted alone to about 1e-6, not bit for bit: the matrix
products' kernels change with the batch size (tests/test_serve.py measures it).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable

import numpy as np

MAX_BATCH = 128  # images per model call: a quarter of evaluation's cache-sized batch (not tuned)
MAX_DELAY_S = 0.0  # no added wait: under load, batches form while the model runs the previous one


@dataclasses.dataclass
class Job:
    images: np.ndarray  # (n, 28, 28) uint8
    future: concurrent.futures.Future


class DynamicBatcher:
    """One model thread fed by a queue of jobs; `predict` maps (N, 28, 28) uint8 to (N, classes) float32."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        max_batch: int = MAX_BATCH,
        max_delay: float = MAX_DELAY_S,
        on_batch: Callable[[int], object] = lambda images: None,
    ):
        """`on_batch(images)` before each model call, on the batcher's thread (the server's metrics)."""
        if max_batch < 1 or max_delay < 0:
            raise ValueError("max_batch must be >= 1 and max_delay >= 0")
        self.predict, self.max_batch, self.max_delay, self.on_batch = predict, max_batch, max_delay, on_batch
        self.jobs: collections.deque[Job] = collections.deque()
        self.queued = 0  # images in self.jobs
        self.changed = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self.run, name="fmnist-batcher", daemon=True)
        self.thread.start()

    def submit(self, images: np.ndarray) -> concurrent.futures.Future:
        """A Future of `images`' rows of probabilities."""
        job = Job(images, concurrent.futures.Future())
        with self.changed:
            if self.closed:
                raise RuntimeError("the batcher is closed")
            self.jobs.append(job)
            self.queued += len(images)
            self.changed.notify()
        return job.future

    def next_batch(self) -> list[Job]:
        """Jobs of at most max_batch images (a larger job alone), after at most max_delay for more to come."""
        with self.changed:
            while not self.jobs and not self.closed:
                self.changed.wait()
            deadline = time.monotonic() + self.max_delay
            while self.queued < self.max_batch and not self.closed and (left := deadline - time.monotonic()) > 0:
                self.changed.wait(left)
            batch: list[Job] = []
            size = 0
            while self.jobs and (not batch or size + len(self.jobs[0].images) <= self.max_batch):
                job = self.jobs.popleft()
                batch.append(job)
                size += len(job.images)
            self.queued -= size
            return batch

    def run(self) -> None:
        while True:
            batch = self.next_batch()
            if not batch:  # closed and drained
                return
            images = np.concatenate([job.images for job in batch])  # (sum n, 28, 28)
            self.on_batch(len(images))
            try:
                probabilities = self.predict(images)
            except Exception as exc:  # every caller learns of it; the thread serves the next batch
                for job in batch:
                    job.future.set_exception(exc)
                continue
            start = 0
            for job in batch:
                job.future.set_result(probabilities[start : start + len(job.images)])
                start += len(job.images)

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        with self.changed:
            self.closed = True
            self.changed.notify_all()
        self.thread.join()
