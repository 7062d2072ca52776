"""Request and batching metrics, exported in Prometheus' text format as TF Serving does.

TF Serving exports its TensorFlow monitoring metrics at ``/monitoring/prometheus/metrics``
when its ``--monitoring_config_file`` says ``prometheus_config { enable: true }``; metric
names are the monitoring names with ``/`` turned into ``:``. The same names are used here:

- ``:tensorflow:serving:request_count`` (counter): labels ``model_name``, ``status`` as
  TF Serving's, plus ``model_version``, ``API`` (predict, classify, regress) and
  ``entrypoint`` (REST, GRPC);
- ``:tensorflow:serving:request_latency`` (histogram, microseconds, TF Serving's buckets
  10 x 1.8^k): the same labels;
- ``:tensorflow:serving:batching_session:processed_batch_size`` (histogram, rows per model
  call made by the batch scheduler, buckets 1, 2, 4 ... 8192): labels ``model_name``,
  ``model_version``.

Extra labels only refine TF Serving's series: a query summing over them gets its numbers.
"""

from __future__ import annotations

import threading

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
BATCH_SIZE = ":tensorflow:serving:batching_session:processed_batch_size"
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# TF Serving's request_latency buckets: Buckets::Exponential(10, 1.8, 33), the last open.
LATENCY_BUCKETS_US = tuple(10.0 * 1.8**k for k in range(32))
# processed_batch_size: Buckets::Exponential(1, 2, 14).
BATCH_BUCKETS = tuple(float(2**k) for k in range(13))

_REQUEST_LABELS = ("model_name", "model_version", "API", "entrypoint", "status")
_BATCH_LABELS = ("model_name", "model_version")


class _Histogram:
    __slots__ = ("counts", "total", "count")

    def __init__(self, buckets: int):
        self.counts = [0] * (buckets + 1)  # the last is +Inf
        self.total = 0.0
        self.count = 0


class Metrics:
    """Thread-safe counters and histograms; `render` gives the Prometheus text."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests: dict[tuple, int] = {}
        self._latency: dict[tuple, _Histogram] = {}
        self._batches: dict[tuple, _Histogram] = {}

    def record_request(self, model_name: str, model_version: int | None, api: str,
                       entrypoint: str, status: str, seconds: float) -> None:
        """One answered predict / classify / regress request; `status` is a code name ("OK")."""
        key = (model_name, "" if model_version is None else str(model_version), api,
               entrypoint, status)
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1
            _observe(self._latency, key, LATENCY_BUCKETS_US, seconds * 1e6)

    def record_batch(self, model_name: str, model_version: int, rows: int) -> None:
        """One model call of the batch scheduler, with `rows` rows."""
        with self._lock:
            _observe(self._batches, (model_name, str(model_version)), BATCH_BUCKETS, rows)

    def request_count(self, **labels) -> int:
        """Requests recorded whose labels include `labels` (for tests and logs)."""
        with self._lock:
            return sum(n for key, n in self._requests.items()
                       if all(dict(zip(_REQUEST_LABELS, key)).get(k) == str(v)
                              for k, v in labels.items()))

    def render(self) -> str:
        """Every metric in Prometheus' text exposition format (version 0.0.4)."""
        with self._lock:
            lines = [f"# TYPE {REQUEST_COUNT} counter"]
            for key, count in sorted(self._requests.items()):
                lines.append(f"{REQUEST_COUNT}{{{_labels(_REQUEST_LABELS, key)}}} {count}")
            lines += _histogram_lines(REQUEST_LATENCY, _REQUEST_LABELS, self._latency,
                                      LATENCY_BUCKETS_US)
            lines += _histogram_lines(BATCH_SIZE, _BATCH_LABELS, self._batches, BATCH_BUCKETS)
        return "\n".join(lines) + "\n"


def _observe(table: dict, key: tuple, buckets: tuple, value: float) -> None:
    histogram = table.get(key)
    if histogram is None:
        histogram = table[key] = _Histogram(len(buckets))
    index = next((i for i, limit in enumerate(buckets) if value <= limit), len(buckets))
    histogram.counts[index] += 1
    histogram.total += value
    histogram.count += 1


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: tuple, values: tuple) -> str:
    return ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _histogram_lines(name: str, label_names: tuple, table: dict, buckets: tuple) -> list[str]:
    lines = [f"# TYPE {name} histogram"]
    for key, histogram in sorted(table.items()):
        labels = _labels(label_names, key)
        cumulative = 0
        for limit, count in zip((*buckets, None), histogram.counts):
            cumulative += count
            bound = "+Inf" if limit is None else _number(limit)
            lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {cumulative}')
        lines.append(f"{name}_sum{{{labels}}} {_number(histogram.total)}")
        lines.append(f"{name}_count{{{labels}}} {histogram.count}")
    return lines
