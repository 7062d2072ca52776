"""Dynamic batching: concurrent predict requests run as one model call.

The same knobs as TF Serving's ``--enable_batching``: a batch is run when it
holds `max_batch_size` rows or when its oldest request has waited
`batch_timeout_micros`; at most `max_enqueued_batches` batches wait; and
`num_batch_threads` batches run at once. One model call on 32 images costs far
less than 32 calls on one, which is where the throughput at high concurrency
comes from; the price is up to one timeout of extra latency at low load.

Unlike TF Serving, a batch that fails (one request with NaN pixels, say) is
re-run request by request, so only the bad request gets the error.
"""

from __future__ import annotations

import collections
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deeplense_tf.errors import ConfigError
from deeplense_tf.serving.status import ServingError, unavailable

Arrays = dict[str, np.ndarray]


@dataclass
class BatchingOptions:
    """Dynamic batching settings (names as in TF Serving's batching parameters file).

    Attributes:
        max_batch_size: most rows (images) in one model call.
        batch_timeout_micros: longest wait, in microseconds, for a batch to fill.
        max_enqueued_batches: queue capacity in batches; beyond it requests get 503.
        num_batch_threads: batches run concurrently.
    """

    max_batch_size: int = 32
    batch_timeout_micros: int = 2000
    max_enqueued_batches: int = 100
    num_batch_threads: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))

    def __post_init__(self):
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"batching option {name} must be >= 1, got {getattr(self, name)}")
        if int(self.batch_timeout_micros) < 0:
            raise ConfigError(
                f"batching option batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}")

    @classmethod
    def from_file(cls, path: str | Path) -> BatchingOptions:
        """Reads TF Serving's ``--batching_parameters_file`` text format.

        Lines such as ``max_batch_size { value: 32 }``; fields this server has no
        use for (``allowed_batch_sizes``, ``pad_variable_length_inputs`` ...) are ignored.
        """
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"batching parameters file {path}: cannot read it ({err})") from None
        values = {}
        for key, value in re.findall(r"(\w+)\s*\{\s*value\s*:\s*([^}\s]+)\s*\}", text):
            values[key] = value
        known = {}
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                     "num_batch_threads"):
            if name in values:
                try:
                    known[name] = int(values[name])
                except ValueError:
                    raise ConfigError(
                        f"batching parameters file {path}: {name} must be an integer, "
                        f"got {values[name]!r}") from None
        if not values:
            raise ConfigError(
                f"batching parameters file {path}: no 'name {{ value: N }}' entries found")
        return cls(**known)


class _Task:
    __slots__ = ("inputs", "rows", "enqueued", "future")

    def __init__(self, inputs: Arrays, rows: int):
        self.inputs = inputs
        self.rows = rows
        self.enqueued = time.monotonic()
        self.future: Future = Future()


class BatchScheduler:
    """Queues requests for one function and runs them in batches.

    `run` maps a dict of input arrays (all with the same number of rows) to a
    dict of output arrays with that many rows. `submit` blocks until its own
    rows of the batched answer are ready.
    """

    def __init__(self, run: Callable[[Arrays], Arrays], options: BatchingOptions, name: str = "",
                 on_batch: Callable[[int], None] | None = None):
        self._run_fn = run
        self._on_batch = on_batch  # told the rows of every model call (metrics)
        self.options = options
        self.name = name
        self._cond = threading.Condition()
        self._collect_lock = threading.Lock()
        self._queue: collections.deque[_Task] = collections.deque()
        self._queued_rows = 0
        self._closed = False
        # Batch sizes run so far (for tests and logging), bounded.
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=10_000)
        self._threads = [
            threading.Thread(target=self._worker, name=f"batch-{name}-{i}", daemon=True)
            for i in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, inputs: Arrays, timeout: float | None = None) -> Arrays:
        """Runs `inputs` as part of a batch; returns this request's outputs."""
        rows = int(next(iter(inputs.values())).shape[0])
        if rows > self.options.max_batch_size:
            # Too big to share a batch: TF Serving refuses these unless large-batch
            # splitting is on; running them alone gives the same numbers.
            return self._run_fn(inputs)
        task = _Task(inputs, rows)
        with self._cond:
            if self._closed:
                raise unavailable("The batch scheduler is shut down")
            capacity = self.options.max_enqueued_batches * self.options.max_batch_size
            if self._queued_rows + rows > capacity:
                raise unavailable(
                    "The batch scheduling queue to which this task was submitted is full")
            self._queue.append(task)
            self._queued_rows += rows
            self._cond.notify_all()
        return task.future.result(timeout=timeout)

    def close(self) -> None:
        """Stops the workers; requests still queued get UNAVAILABLE."""
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._queued_rows = 0
            self._cond.notify_all()
        for task in pending:
            task.future.set_exception(unavailable("The batch scheduler is shut down"))
        for thread in self._threads:
            thread.join(timeout=5.0)

    # -- workers

    def _worker(self) -> None:
        while True:
            # One worker gathers the next batch while the others run theirs.
            with self._collect_lock:
                batch = self._collect()
            if batch is None:
                return
            self._run_batch(batch)

    def _collect(self) -> list[_Task] | None:
        timeout = self.options.batch_timeout_micros / 1e6
        limit = self.options.max_batch_size
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            # The oldest request's wait bounds the batch's; requests that queued while
            # all workers were busy are therefore run at once.
            deadline = self._queue[0].enqueued + timeout
            while self._queued_rows < limit and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._closed:
                return None
            batch, rows = [], 0
            while self._queue and rows + self._queue[0].rows <= limit:
                task = self._queue.popleft()
                rows += task.rows
                batch.append(task)
            self._queued_rows -= rows
            return batch

    def _run_batch(self, batch: list[_Task]) -> None:
        total = sum(task.rows for task in batch)
        self.batch_sizes.append(total)
        if self._on_batch is not None:
            self._on_batch(total)
        if len(batch) == 1:
            self._run_alone(batch[0])
            return
        try:
            inputs = {k: np.concatenate([t.inputs[k] for t in batch]) for k in batch[0].inputs}
            outputs = self._run_fn(inputs)
            for name, value in outputs.items():
                if np.ndim(value) == 0 or np.shape(value)[0] != total:
                    raise ServingError(
                        "INTERNAL",
                        f"output {name} has shape {np.shape(value)}, not {total} rows: "
                        "this signature cannot be batched")
        except Exception:  # noqa: BLE001 - each request gets its own answer below
            for task in batch:
                self._run_alone(task)
            return
        start = 0
        for task in batch:
            stop = start + task.rows
            task.future.set_result({k: v[start:stop] for k, v in outputs.items()})
            start = stop

    def _run_alone(self, task: _Task) -> None:
        try:
            task.future.set_result(self._run_fn(task.inputs))
        except BaseException as err:  # noqa: BLE001 - handed to the waiting request
            task.future.set_exception(err)
