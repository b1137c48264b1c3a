"""MicroBatcher: concurrent small requests share transforms, each gets its own rows back."""

import threading

import numpy as np
import pytest

from juicepy.serve.batcher import MicroBatcher


class Recorder:
    """A transform that doubles its input and records the rows of every call; ``gate`` holds
    the first call so requests pile up behind it."""

    def __init__(self):
        self.calls, self.gate = [], threading.Event()

    def __call__(self, inputs):
        self.calls.append(int(inputs[0].shape[0]))
        self.gate.wait(30)
        return [inputs[0] * 2]


def _submit_all(batcher, requests):
    results = [None] * len(requests)

    def run(i):
        results[i] = batcher.submit([requests[i]])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    return threads, results


def test_queued_requests_share_one_transform_and_get_their_own_rows():
    run = Recorder()
    batcher = MicroBatcher(run, max_rows=8, max_wait_s=0.0)
    try:
        blocker = threading.Thread(target=batcher.submit, args=([np.zeros((1, 2))],))
        blocker.start()
        while not run.calls:  # the worker is busy with the first request
            threading.Event().wait(0.001)
        requests = [np.full((rows, 2), i, float) for i, rows in enumerate([1, 2, 1, 3, 1, 2, 1])]
        threads, results = _submit_all(batcher, requests)
        while batcher.pending < len(requests):
            threading.Event().wait(0.001)
        run.gate.set()
        blocker.join()
        for t in threads:
            t.join()
    finally:
        batcher.close()
    for x, got in zip(requests, results):
        np.testing.assert_array_equal(got[0], x * 2)
    # 11 queued rows, at most 8 per transform: two transforms after the first, in arrival order
    assert run.calls[0] == 1 and sum(run.calls[1:]) == 11 and max(run.calls) <= 8
    assert len(run.calls) == 3
    assert batcher.batches == 3 and batcher.batched_requests == 8


def test_requests_of_max_rows_or_more_run_on_their_own():
    run = Recorder()
    run.gate.set()
    batcher = MicroBatcher(run, max_rows=4, max_wait_s=0.0)
    try:
        out = batcher.submit([np.ones((10, 2))])
    finally:
        batcher.close()
    np.testing.assert_array_equal(out[0], np.full((10, 2), 2.0))
    assert batcher.batches == 0 and run.calls == [10]


def test_a_failing_transform_fails_its_requests_and_the_worker_lives_on():
    calls = []

    def run(inputs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return [inputs[0] + 1]

    batcher = MicroBatcher(run, max_rows=4, max_wait_s=0.0)
    try:
        with pytest.raises(RuntimeError, match="device lost"):
            batcher.submit([np.zeros((1, 1))])
        np.testing.assert_array_equal(batcher.submit([np.zeros((1, 1))])[0], [[1.0]])
    finally:
        batcher.close()


def test_a_lone_request_waits_for_company_only_up_to_the_bound():
    run = Recorder()
    run.gate.set()
    batcher = MicroBatcher(run, max_rows=64, max_wait_s=0.05)
    try:
        for _ in range(3):  # answered after the bounded wait though no other request comes
            np.testing.assert_array_equal(batcher.submit([np.ones((1, 3))])[0], np.full((1, 3), 2.0))
    finally:
        batcher.close()
    assert run.calls == [1, 1, 1]


def test_close_answers_what_is_queued_then_refuses():
    run = Recorder()
    run.gate.set()
    batcher = MicroBatcher(run, max_rows=4, max_wait_s=0.0)
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit([np.zeros((1, 1))])


@pytest.mark.parametrize("kwargs,words", [({"max_rows": 1, "max_wait_s": 0}, "max_rows must be an integer >= 2"),
                                          ({"max_rows": 4, "max_wait_s": -1}, "max_wait_s must be a finite number >= 0")])
def test_bad_settings_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        MicroBatcher(lambda x: x, **kwargs)


def test_the_worker_waits_for_a_request_that_is_arriving():
    run = Recorder()
    run.gate.set()
    batcher = MicroBatcher(run, max_rows=8, max_wait_s=30.0)
    first = []
    try:
        # two requests announced (bodies being read); whichever is queued first, the other is
        # still arriving then, so the worker waits for it and runs both as one transform
        with batcher.arriving() as a, batcher.arriving() as b:
            thread = threading.Thread(target=lambda: first.append(a.submit([np.ones((1, 2))])))
            thread.start()
            second = b.submit([np.zeros((2, 2))])
            thread.join()
    finally:
        batcher.close()
    assert run.calls == [3], "the arriving request should have joined the first one's batch"
    np.testing.assert_array_equal(second[0], np.zeros((2, 2)))
    np.testing.assert_array_equal(first[0][0], np.full((1, 2), 2.0))


def test_no_wait_when_nothing_is_arriving():
    run = Recorder()
    run.gate.set()
    batcher = MicroBatcher(run, max_rows=8, max_wait_s=600.0)
    try:
        threads, results = _submit_all(batcher, [np.ones((1, 2))])
        threads[0].join(timeout=60)  # far below the 600 s bound: nobody else was on the way
        assert not threads[0].is_alive(), "a lone request waited for company that was not coming"
    finally:
        batcher.close()
    assert run.calls == [1]


def test_a_refused_arrival_stops_counting():
    run = Recorder()
    run.gate.set()
    batcher = MicroBatcher(run, max_rows=8, max_wait_s=600.0)
    try:
        with pytest.raises(ValueError):
            with batcher.arriving():
                raise ValueError("bad body")  # never submitted
        threads, _ = _submit_all(batcher, [np.ones((1, 2))])
        threads[0].join(timeout=60)
        assert not threads[0].is_alive(), "the worker still waited for the refused request"
    finally:
        batcher.close()
