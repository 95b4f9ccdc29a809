"""Requests waiting for the model, run together.

While a batch runs, new requests queue; the next batch takes every request waiting, up to
`max_batch` images, so that under load the model runs in batches (as TF Serving's batching does)
and a request alone waits for nobody: no timeout is added to gather more. `workers` batches run
at once (1 for a runner that is not thread-safe). How many may wait is decided before a request
gets here (admission.py).
"""

import collections
import dataclasses
import threading

import numpy as np

from skin_keras.data.patient_metadata import MISSING


@dataclasses.dataclass
class _Job:
    images: np.ndarray
    records: list | None
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: dict | None = None
    error: BaseException | None = None


class Batcher:
    """`batcher(images, records)` -> `run(images, records)`'s outputs for these images, run in
    a batch with whatever else was waiting."""

    def __init__(self, run, workers: int = 1, max_batch: int = 8):
        self._run, self._max_batch = run, max_batch
        self._queue: collections.deque[_Job] = collections.deque()
        self._condition = threading.Condition()
        for _ in range(workers):
            threading.Thread(target=self._work, daemon=True).start()

    def __call__(self, images: np.ndarray, records: list | None) -> dict[str, np.ndarray]:
        job = _Job(images, records)
        with self._condition:
            self._queue.append(job)
            self._condition.notify()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    @property
    def waiting(self) -> int:
        with self._condition:
            return len(self._queue)

    def _take(self) -> list[_Job]:
        with self._condition:
            while not self._queue:
                self._condition.wait()
            jobs = [self._queue.popleft()]
            count = len(jobs[0].images)
            while self._queue and count + len(self._queue[0].images) <= self._max_batch:
                jobs.append(self._queue.popleft())
                count += len(jobs[-1].images)
        return jobs

    def _work(self) -> None:
        while True:
            jobs = self._take()
            try:
                records = None
                if any(job.records is not None for job in jobs):
                    records = [record for job in jobs
                               for record in (job.records or [MISSING] * len(job.images))]
                results = self._run(np.concatenate([job.images for job in jobs]), records)
                start = 0
                for job in jobs:
                    end = start + len(job.images)
                    job.result = {name: values[start:end] for name, values in results.items()}
                    start = end
            except Exception as error:  # pylint: disable=broad-except  (raised by each caller)
                for job in jobs:
                    job.error = error
            finally:
                for job in jobs:
                    job.done.set()
