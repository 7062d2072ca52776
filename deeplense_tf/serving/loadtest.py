"""Closed-loop load generation: N threads send requests back to back, latencies recorded.

Used by ``serving/loadtest.py`` (operators) and ``benchmarks/bench_serving.py``.
Each thread sends its next request as soon as the previous one is answered, so
`concurrency` is the number of requests in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    """Latencies (ms) of the answered requests and the wall time of the run (s)."""

    concurrency: int
    latencies_ms: np.ndarray
    wall_s: float
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return int(self.latencies_ms.size)

    @property
    def throughput(self) -> float:
        """Answered requests per second."""
        return self.requests / self.wall_s if self.wall_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.requests else float("nan")

    @property
    def p50_ms(self) -> float:
        return self.percentile(50)

    @property
    def p99_ms(self) -> float:
        return self.percentile(99)

    def summary(self) -> dict:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "throughput_rps": round(self.throughput, 1),
        }


def run_load(call: Callable[[], object], *, concurrency: int, num_requests: int,
             max_seconds: float = 60.0, warmup_per_thread: int = 2,
             on_start: Callable[[], None] | None = None) -> LoadResult:
    """Sends `num_requests` calls of `call()` from `concurrency` threads.

    `call` must be thread-safe (`RestClient` keeps one connection per thread;
    `GrpcClient` shares one channel). Each thread first makes
    `warmup_per_thread` untimed calls; the run stops early after `max_seconds`.
    Exceptions count as errors (the first few messages are kept). `on_start` is
    called when the timed part begins (after the warm-up), e.g. to read a counter.
    """
    if concurrency < 1 or num_requests < 1:
        raise ValueError("concurrency and num_requests must be >= 1")
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    errors: list[str] = []
    barrier = threading.Barrier(concurrency + 1)
    deadline = [float("inf")]  # set when the timed run starts

    def worker():
        nonlocal issued
        for _ in range(warmup_per_thread):
            try:
                call()
            except Exception:  # noqa: BLE001 - warm-up failures show up in the timed run
                pass
        barrier.wait()
        while True:
            with lock:
                if issued >= num_requests or time.perf_counter() > deadline[0]:
                    return
                issued += 1
            start = time.perf_counter()
            try:
                call()
            except Exception as err:  # noqa: BLE001 - counted, not fatal
                with lock:
                    errors.append(f"{type(err).__name__}: {err}")
                continue
            elapsed = (time.perf_counter() - start) * 1e3
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    if on_start is not None:
        # Workers block on the barrier until this returns, so nothing timed runs before.
        _wait_until_waiting(barrier, concurrency)
        on_start()
    barrier.wait()
    start = time.perf_counter()
    deadline[0] = start + max_seconds
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return LoadResult(concurrency=concurrency, latencies_ms=np.asarray(latencies), wall_s=wall,
                      errors=len(errors), error_samples=errors[:5])


def _wait_until_waiting(barrier: threading.Barrier, parties: int) -> None:
    while barrier.n_waiting < parties and not barrier.broken:
        time.sleep(0.001)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """Rows of dicts as a Markdown table with the given columns."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)
