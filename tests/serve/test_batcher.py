"""The server's batching: requests that wait while a batch runs are run together, each gets its
own rows back, and an error reaches every request of its batch (how many may wait is
admission's: test_api.py)."""

import threading
import time

import numpy as np
import pytest

from skin_keras.serve.batcher import Batcher


class Gated:
    """A model that waits for `gate` before answering each image's first pixel value."""

    def __init__(self):
        self.gate, self.entered, self.sizes = threading.Event(), threading.Event(), []

    def __call__(self, images, records):
        self.sizes.append(len(images))
        self.entered.set()
        self.gate.wait(30)
        if (images == -1).any():
            raise ValueError("the model failed")
        return {"value": images[:, 0].copy(), "records": np.array(
            [-1 if records is None else len(records)] * len(images))}


def ask(batcher, values, answers, index, records=None):
    try:
        answers[index] = batcher(np.array(values, np.float32)[:, None], records)
    except Exception as error:  # pylint: disable=broad-except
        answers[index] = error


def wait_until(condition):
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def busy_batcher(max_batch: int):
    """A gated model, its one-worker batcher and the thread of a first request that is
    running (the gate closed), so that the next requests queue; answers land in `answers`."""
    model, answers = Gated(), {}
    batcher = Batcher(model, workers=1, max_batch=max_batch)
    first = threading.Thread(target=ask, args=(batcher, [0.0], answers, 0))
    first.start()
    wait_until(model.entered.is_set)
    return model, batcher, first, answers


def test_requests_waiting_run_as_one_batch_and_get_their_own_rows():
    model, batcher, first, answers = busy_batcher(max_batch=8)
    requests = [[1.0], [2.0, 3.0], [4.0], [5.0]]
    threads = [threading.Thread(target=ask, args=(batcher, values, answers, index + 1))
               for index, values in enumerate(requests)]
    for thread in threads:
        thread.start()
    wait_until(lambda: batcher.waiting == 4)
    model.gate.set()
    for thread in [first, *threads]:
        thread.join(30)
    assert model.sizes == [1, 5]
    for index, values in enumerate([[0.0], *requests]):
        assert answers[index]["value"].tolist() == values


def test_a_batch_holds_at_most_max_batch_images_and_metadata_is_filled_in():
    model, batcher, first, answers = busy_batcher(max_batch=2)
    threads = [threading.Thread(target=ask, args=(batcher, [float(i)], answers, i,
                                                  ["record"] if i == 2 else None))
               for i in range(1, 4)]
    for thread in threads:
        thread.start()
        wait_until(lambda t=thread: batcher.waiting == threads.index(t) + 1)
    model.gate.set()
    for thread in [first, *threads]:
        thread.join(30)
    assert model.sizes == [1, 2, 1]
    # A batch where one request has records: the others' rows are filled with MISSING.
    assert answers[1]["records"].tolist() == [2] and answers[3]["records"].tolist() == [-1]


def test_an_error_reaches_every_request_of_its_batch_and_the_next_batch_runs():
    model = Gated()
    model.gate.set()
    batcher = Batcher(model, workers=1)
    answers = {}
    ask(batcher, [-1.0], answers, 0)
    assert isinstance(answers[0], ValueError)
    ask(batcher, [7.0], answers, 1)
    assert answers[1]["value"].tolist() == [7.0]
