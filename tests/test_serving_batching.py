"""Dynamic batching (deeplense_tf/serving/batching.py) with a numpy stand-in for the model."""

import threading
import time

import numpy as np
import pytest

from deeplense_tf.errors import ConfigError
from deeplense_tf.serving.batching import BatchingOptions, BatchScheduler
from deeplense_tf.serving.status import ServingError


class CountingModel:
    """y = 2x per row; fails on any NaN row (like the exported graph's finiteness check)."""

    def __init__(self, delay_s=0.0):
        self.calls = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, inputs):
        x = inputs["x"]
        with self.lock:
            self.calls.append(len(x))
        time.sleep(self.delay_s)
        if np.isnan(x).any():
            raise ServingError("INVALID_ARGUMENT", "x has NaN")
        return {"y": 2 * x, "row_sum": x.sum(axis=1)}


def _submit_concurrently(scheduler, requests):
    results = [None] * len(requests)

    def send(i):
        try:
            results[i] = scheduler.submit({"x": requests[i]}, timeout=10)
        except ServingError as err:
            results[i] = err

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_requests_share_model_calls_and_get_their_own_rows():
    model = CountingModel(delay_s=0.01)
    options = BatchingOptions(max_batch_size=8, batch_timeout_micros=50_000, num_batch_threads=1)
    scheduler = BatchScheduler(model, options)
    try:
        requests = [np.full((1 + i % 2, 3), float(i), np.float32) for i in range(12)]
        results = _submit_concurrently(scheduler, requests)
    finally:
        scheduler.close()
    for x, out in zip(requests, results):
        np.testing.assert_array_equal(out["y"], 2 * x)
        np.testing.assert_array_equal(out["row_sum"], x.sum(axis=1))
    assert sum(model.calls) == sum(len(x) for x in requests)
    assert len(model.calls) < len(requests)  # batched: fewer calls than requests
    assert max(model.calls) <= options.max_batch_size


def test_a_bad_request_does_not_fail_its_batch_neighbours():
    model = CountingModel()
    scheduler = BatchScheduler(model, BatchingOptions(max_batch_size=16, batch_timeout_micros=100_000,
                                                      num_batch_threads=1))
    try:
        good = [np.ones((1, 2), np.float32) * i for i in range(5)]
        bad = np.array([[np.nan, 1.0]], np.float32)
        results = _submit_concurrently(scheduler, good + [bad])
    finally:
        scheduler.close()
    assert isinstance(results[-1], ServingError) and "NaN" in results[-1].message
    for x, out in zip(good, results[:-1]):
        np.testing.assert_array_equal(out["y"], 2 * x)


def test_timeout_bounds_the_wait_of_a_lone_request():
    scheduler = BatchScheduler(CountingModel(), BatchingOptions(
        max_batch_size=64, batch_timeout_micros=20_000, num_batch_threads=1))
    try:
        start = time.perf_counter()
        out = scheduler.submit({"x": np.ones((1, 2), np.float32)}, timeout=5)
        elapsed = time.perf_counter() - start
    finally:
        scheduler.close()
    assert out["y"].tolist() == [[2.0, 2.0]]
    assert 0.015 <= elapsed < 2.0


def test_full_queue_answers_unavailable_and_oversized_requests_run_alone():
    model = CountingModel(delay_s=0.3)
    scheduler = BatchScheduler(model, BatchingOptions(
        max_batch_size=2, batch_timeout_micros=0, max_enqueued_batches=1, num_batch_threads=1))
    try:
        big = scheduler.submit({"x": np.ones((5, 1), np.float32)})
        assert big["y"].shape == (5, 1) and model.calls == [5]
        results = _submit_concurrently(scheduler, [np.ones((2, 1), np.float32)] * 4)
    finally:
        scheduler.close()
    refused = [r for r in results if isinstance(r, ServingError)]
    assert refused and all(r.code == "UNAVAILABLE" and r.http_status == 503 for r in refused)
    assert "queue" in refused[0].message
    assert any(isinstance(r, dict) for r in results)


def test_closing_answers_unavailable():
    scheduler = BatchScheduler(CountingModel(), BatchingOptions(num_batch_threads=1))
    scheduler.close()
    with pytest.raises(ServingError) as info:
        scheduler.submit({"x": np.ones((1, 1), np.float32)})
    assert info.value.code == "UNAVAILABLE"


def test_batching_parameters_file(tmp_path):
    path = tmp_path / "batching_parameters.txt"
    path.write_text("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 500 }\n"
                    "num_batch_threads { value: 3 }\npad_variable_length_inputs: true\n")
    options = BatchingOptions.from_file(path)
    assert (options.max_batch_size, options.batch_timeout_micros, options.num_batch_threads) == (16, 500, 3)
    assert options.max_enqueued_batches == 100
    path.write_text("max_batch_size { value: big }\n")
    with pytest.raises(ConfigError, match="max_batch_size must be an integer"):
        BatchingOptions.from_file(path)
    with pytest.raises(ConfigError, match="max_batch_size must be >= 1"):
        BatchingOptions(max_batch_size=0)
