"""Latency and throughput of `deeplense serve` over REST and gRPC, with and without batching.

    .venv/bin/python benchmarks/bench_serving.py                      # builds a small export
    .venv/bin/python benchmarks/bench_serving.py --model-base-path export/deeplense --out serving.md

Starts `deeplense serve` as a subprocess on free 127.0.0.1 ports, once without and once
with `--enable-batching`, and drives it from this process with `RestClient` and
`GrpcClient` (closed loop: each of C threads sends its next request when the last is
answered; one 64x64 image per request). Client and server share the machine's cores,
so the numbers are a floor, not what a dedicated serving host would do.

Without --model-base-path the model is the quickstart architecture (ResNet-18, width
16, crop 48, Gaussian head, random weights) exported with `deeplense_tf.export`'s
SavedModel writer, so the graph is the one users serve. `run_serving_benchmark` is
importable so other benchmarks can put these rows next to theirs in one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deeplense_tf.serving.loadtest import markdown_table, run_load  # noqa: E402

CONCURRENCY = (1, 8, 32)
COLUMNS = ["protocol", "batching", "concurrency", "requests", "errors", "p50_ms", "p99_ms",
           "throughput_rps"]
DEFAULT_BATCHING = ["--enable-batching", "--max-batch-size", "32", "--batch-timeout-micros", "2000",
                    "--num-batch-threads", "2"]


def build_benchmark_export(out_dir: Path, image_size: int = 64) -> Path:
    """A quickstart-sized ResNet exported as `out_dir/deeplense/1`; returns the base path."""
    import keras

    from deeplense_tf.export.savedmodel import write_saved_model
    from deeplense_tf.export.spec import ExportSpec
    from deeplense_tf.models import build_model

    keras.utils.set_random_seed(0)
    targets = ["log10_m_axion"]
    model = build_model("resnet", (image_size, image_size, 1), targets, head="gaussian",
                        crop=48, depth=18, width=16)
    spec = ExportSpec(model_name="resnet", targets=tuple(targets), head="gaussian",
                      input_shape=(image_size, image_size, 1),
                      target_stats={t: {"mean": 0.0, "std": 1.0} for t in targets})
    base = out_dir / "deeplense"
    warmup = np.random.default_rng(0).normal(size=(1, image_size, image_size, 1)).astype(np.float32)
    write_saved_model(model, spec, base / "1", model_name="deeplense", warmup_images=warmup)
    return base


class ServeProcess:
    """`deeplense serve` in a subprocess; its REST URL and gRPC target once it is up."""

    def __init__(self, base_path: Path, extra_args: list[str], timeout_s: float = 180.0):
        cmd = [sys.executable, "-m", "deeplense_tf", "serve", "--model-base-path", str(base_path),
               "--host", "127.0.0.1", "--port", "0", "--grpc-port", "0",
               "--file-system-poll-wait-seconds", "0", *extra_args]
        self.command = " ".join(["deeplense", *cmd[3:]])
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        self.rest_url = self.grpc_target = None
        lines = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if m := re.search(r"REST\s+(http://\S+?)/v1/models", line):
                self.rest_url = m.group(1)
            if m := re.search(r"gRPC\s+(\S+)", line):
                self.grpc_target = m.group(1)
            if "Ctrl-C to stop" in line:
                return
        self.stop()
        raise RuntimeError("deeplense serve did not start:\n" + "\n".join(lines[-20:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _cells(protocol: str, call, batching: bool, requests_per_level: dict[int, int],
           max_seconds: float) -> list[dict]:
    rows = []
    for concurrency in CONCURRENCY:
        result = run_load(call, concurrency=concurrency, num_requests=requests_per_level[concurrency],
                          max_seconds=max_seconds)
        row = {"protocol": protocol, "batching": "on" if batching else "off", **result.summary()}
        if result.error_samples:
            row["first_error"] = result.error_samples[0][:200]
        rows.append(row)
        print(f"  {protocol:4s} batching {row['batching']:3s} c={concurrency:2d}: "
              f"p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
              f"{row['throughput_rps']:7.1f} req/s  errors {row['errors']}", flush=True)
    return rows


def run_serving_benchmark(base_path: Path, *, requests: int = 200, max_seconds: float = 15.0,
                          batching_args: list[str] | None = None, image_size: int | None = None
                          ) -> tuple[list[dict], list[str]]:
    """All rows (REST and gRPC, batching off and on, each concurrency) and the serve commands."""
    from deeplense_tf.serving.grpc_client import GrpcClient
    from deeplense_tf.serving.rest_client import RestClient

    rows, commands = [], []
    per_level = {c: max(requests, 12 * c) for c in CONCURRENCY}
    for batching in (False, True):
        server = ServeProcess(base_path, (batching_args or DEFAULT_BATCHING) if batching else [])
        commands.append(server.command)
        try:
            rest = RestClient(server.rest_url, "deeplense", timeout=60, retries=0)
            size = image_size or rest.metadata()["signatures"]["serving_default"]["inputs"][
                "image"]["shape"][1]
            image = np.random.default_rng(1).normal(size=(1, size, size, 1)).astype(np.float32)
            # One encoded body, sent again and again: measures the server, not json.dumps.
            body = rest.encode_predict(image)
            rows += _cells("REST", lambda: rest.predict_encoded(body), batching, per_level,
                           max_seconds)
            grpc_client = GrpcClient(server.grpc_target, "deeplense", timeout=60, retries=0)
            request = grpc_client.make_request(image)
            rows += _cells("gRPC", lambda: grpc_client.predict_request(request), batching,
                           per_level, max_seconds)
            grpc_client.close()
        finally:
            server.stop()
    return rows, commands


def speedups(rows: list[dict]) -> list[str]:
    """'REST c=32: batching x2.4 throughput' lines."""
    lines = []
    for protocol in ("REST", "gRPC"):
        for concurrency in CONCURRENCY:
            pair = {r["batching"]: r for r in rows
                    if r["protocol"] == protocol and r["concurrency"] == concurrency}
            if {"on", "off"} <= set(pair) and pair["off"]["throughput_rps"]:
                ratio = pair["on"]["throughput_rps"] / pair["off"]["throughput_rps"]
                lines.append(f"{protocol} c={concurrency}: batching changes throughput x{ratio:.2f}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base-path", type=Path,
                        help="DIR/<name> with version folders (default: build a quickstart-sized export)")
    parser.add_argument("--requests", type=int, default=200,
                        help="requests per cell (at least 12 x concurrency)")
    parser.add_argument("--max-seconds", type=float, default=15.0, help="cap per cell")
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        base = args.model_base_path
        if base is None:
            print("building the benchmark export (ResNet-18 width 16, random weights) ...", flush=True)
            base = build_benchmark_export(Path(tmp))
        rows, commands = run_serving_benchmark(base, requests=args.requests,
                                               max_seconds=args.max_seconds)
    table = markdown_table(rows, COLUMNS)
    lines = [
        "## Serving: `deeplense serve` over REST and gRPC",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        "client threads and server share the CPUs. One 64x64 image per request, closed loop.",
        "",
        "Command: `.venv/bin/python benchmarks/bench_serving.py" +
        (f" --model-base-path {args.model_base_path}" if args.model_base_path else "") + "`",
        "",
        "Servers:",
        *[f"- `{c}`" for c in commands],
        "",
        table,
        "",
        *[f"- {line}" for line in speedups(rows)],
        "",
        f"Total wall time {time.perf_counter() - started:.0f} s.",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
