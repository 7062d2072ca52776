"""Latency and throughput of `deeplense serve` over REST and gRPC, with and without batching.

    .venv/bin/python benchmarks/bench_serving.py                      # same model as bench_latency.py
    .venv/bin/python benchmarks/bench_serving.py --options '{"width": 16}'   # the quickstart resnet
    .venv/bin/python benchmarks/bench_serving.py --model-base-path export/deeplense --out serving.md

Two tables from one run:

1. Single-client latency, next to the export benchmark's rows (`benchmarks/bench_latency.py`:
   the SavedModel in process and TFLite fp32), at batch 1 and 64: the same model, the
   same images, the same timing function, plus REST and gRPC against the local server.
2. Concurrency: `deeplense serve` started as a subprocess on free 127.0.0.1 ports, once
   without and once with `--enable-batching`, driven by `RestClient` / `GrpcClient` from
   C = 1, 8, 32 threads (closed loop, one 64x64 image per request): p50 / p99 latency,
   throughput, and the server's CPU time per request.

Client and server share the machine's cores, so throughput is a floor; the server's CPU
per request does not depend on what else runs. `run_serving_benchmark` is importable.
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
from argparse import Namespace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from deeplense_tf.serving.loadtest import markdown_table, run_load  # noqa: E402

CONCURRENCY = (1, 8, 32)
COLUMNS = ["protocol", "batching", "concurrency", "requests", "errors", "p50_ms", "p99_ms",
           "throughput_rps", "server_cpu_ms"]
DEFAULT_BATCHING = ["--enable-batching", "--max-batch-size", "32", "--batch-timeout-micros", "2000",
                    "--num-batch-threads", "2"]


def build_benchmark_export(out_dir: Path, model_name: str = "resnet", options: str = "{}"):
    """The bench_latency.py model exported as `out_dir/deeplense/1`.

    Returns (base path, Keras model, ExportSpec, images [64, H, W, 1], description).
    """
    import bench_latency

    from deeplense_tf.export.savedmodel import write_saved_model

    # bench_latency's own definition of "the benchmark model" (untrained, 64x64, crop 48,
    # its --model / --options), so both benchmarks time the same graph.
    model, spec, _calibration, images, what = bench_latency._model_and_images(
        Namespace(run=None, model=model_name, image_size=64, crop=48, options=options))
    base = out_dir / "deeplense"
    write_saved_model(model, spec, base / "1", model_name="deeplense", warmup_images=images[:1])
    return base, model, spec, images, what


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


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _cells(protocol: str, call, batching: bool, requests_per_level: dict[int, int],
           max_seconds: float, server_pid: int) -> list[dict]:
    rows = []
    for concurrency in CONCURRENCY:
        cpu_at_start = []
        result = run_load(call, concurrency=concurrency, num_requests=requests_per_level[concurrency],
                          max_seconds=max_seconds,
                          on_start=lambda seen=cpu_at_start: seen.append(process_cpu_seconds(server_pid)))
        cpu_end = process_cpu_seconds(server_pid)
        row = {"protocol": protocol, "batching": "on" if batching else "off", **result.summary()}
        if cpu_end is not None and cpu_at_start[0] is not None and result.requests:
            # CPU the server spent per answer: unlike wall-clock numbers, it does not
            # depend on what else the machine is running.
            row["server_cpu_ms"] = round((cpu_end - cpu_at_start[0]) / result.requests * 1e3, 2)
        if result.error_samples:
            row["first_error"] = result.error_samples[0][:200]
        rows.append(row)
        print(f"  {protocol:4s} batching {row['batching']:3s} c={concurrency:2d}: "
              f"p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
              f"{row['throughput_rps']:7.1f} req/s  server CPU {row.get('server_cpu_ms', '?')} ms/req"
              f"  errors {row['errors']}", flush=True)
    return rows


def run_serving_benchmark(base_path: Path, *, requests: int = 50, max_seconds: float = 10.0,
                          batching_args: list[str] | None = None, latency_rows: dict | None = None,
                          images: np.ndarray | None = None, latency_seconds: float = 1.0
                          ) -> tuple[list[dict], list[dict], list[str]]:
    """(concurrency rows, single-client latency results, serve commands).

    `latency_rows` are bench_latency-style `predict(images)` functions (the in-process
    rows of the same model) timed together with REST and gRPC against the server
    without batching (batching only adds its timeout for a lone client); `images`
    [N, H, W, 1] are what they all predict.
    """
    import bench_latency

    from deeplense_tf.serving.grpc_client import GrpcClient
    from deeplense_tf.serving.rest_client import RestClient

    rows, commands, latency = [], [], []
    latency_rows = dict(latency_rows or {})
    per_level = {c: max(requests, 6 * c) for c in CONCURRENCY}
    for batching in (False, True):
        server = ServeProcess(base_path, (batching_args or DEFAULT_BATCHING) if batching else [])
        commands.append(server.command)
        try:
            rest = RestClient(server.rest_url, "deeplense", timeout=120, retries=1)
            grpc_client = GrpcClient(server.grpc_target, "deeplense", timeout=120, retries=1)
            size = rest.metadata()["signatures"]["serving_default"]["inputs"]["image"]["shape"][1]
            if images is None:
                images = np.random.default_rng(1).gamma(
                    0.5, 1.0, size=(64, size, size, 1)).astype(np.float32)
            image = images[:1]
            # One encoded body, sent again and again: measures the server, not json.dumps.
            body = rest.encode_predict(image)
            rows += _cells("REST", lambda rest=rest, body=body: rest.predict_encoded(body),
                           batching, per_level, max_seconds, server.proc.pid)
            request = grpc_client.make_request(image)
            rows += _cells("gRPC", lambda g=grpc_client, r=request: g.predict_request(r),
                           batching, per_level, max_seconds, server.proc.pid)
            if not batching:
                latency_rows["REST, local server"] = lambda x, c=rest: c.predict(x)
                latency_rows["gRPC, local server"] = lambda x, c=grpc_client: c.predict(x)
                print("single-client latency (batch 1 and 64):", flush=True)
                latency = bench_latency.benchmark(latency_rows, images, seconds=latency_seconds,
                                                  warmup=1, min_calls=3)
            grpc_client.close()
        finally:
            server.stop()
    return rows, latency, commands


def speedups(rows: list[dict]) -> list[str]:
    """'REST c=32: batching changes throughput x2.40, server CPU per request /2.10' lines."""
    lines = []
    for protocol in ("REST", "gRPC"):
        for concurrency in CONCURRENCY:
            pair = {r["batching"]: r for r in rows
                    if r["protocol"] == protocol and r["concurrency"] == concurrency}
            if {"on", "off"} <= set(pair) and pair["off"]["throughput_rps"]:
                ratio = pair["on"]["throughput_rps"] / pair["off"]["throughput_rps"]
                line = f"{protocol} c={concurrency}: batching changes throughput x{ratio:.2f}"
                if pair["on"].get("server_cpu_ms") and pair["off"].get("server_cpu_ms"):
                    cpu = pair["off"]["server_cpu_ms"] / pair["on"]["server_cpu_ms"]
                    line += f", server CPU per request /{cpu:.2f}"
                lines.append(line)
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base-path", type=Path,
                        help="DIR/<name> with version folders (default: export bench_latency's model)")
    parser.add_argument("--model", default="resnet",
                        help="architecture to export when no --model-base-path (as bench_latency.py)")
    parser.add_argument("--options", default="{}",
                        help='builder options as JSON, e.g. \'{"width": 16}\' (the quickstart resnet)')
    parser.add_argument("--requests", type=int, default=50,
                        help="requests per concurrency cell (at least 6 x concurrency)")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="time cap per cell")
    parser.add_argument("--latency-seconds", type=float, default=1.0,
                        help="time per single-client latency row and batch size")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import bench_latency

    started = time.perf_counter()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        latency_rows, images = {}, None
        if args.model_base_path is None:
            print(f"exporting the benchmark model (bench_latency.py's untrained {args.model}) ...",
                  flush=True)
            base, model, spec, images, what = build_benchmark_export(Path(tmp), args.model,
                                                                    args.options)
            # The export benchmark's in-process rows (TFLite fp32 only, to stay within minutes).
            # The export benchmark's rows for the served graph (its Keras rows are left to
            # bench_latency.py: they do not bear on serving and take minutes at batch 64).
            every = bench_latency.default_rows(model, spec, Path(tmp) / "latency",
                                               variants="fp32", threads=(2,),
                                               calibration_images=images,
                                               saved_model_dir=base / "1")
            latency_rows = {k: v for k, v in every.items() if not k.startswith("Keras")}
        else:
            base, what = args.model_base_path, f"export {args.model_base_path}"
            latency_rows = {"SavedModel serving_default":
                            bench_latency.saved_model_row(_latest_version(base))}
        rows, latency, commands = run_serving_benchmark(
            base, requests=args.requests, max_seconds=args.max_seconds, latency_rows=latency_rows,
            images=images, latency_seconds=args.latency_seconds)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    flags = [f"--model-base-path {args.model_base_path}"] if args.model_base_path else []
    flags += [f"--model {args.model}"] if args.model != "resnet" else []
    flags += [f"--options '{args.options}'"] if args.options != "{}" else []
    command = "`" + " ".join([".venv/bin/python benchmarks/bench_serving.py", *flags]) + "`"
    lines = [
        "## Serving: local server over REST and gRPC, next to in-process prediction",
        "",
        f"Model: {what}. Machine: {platform.machine()}, {os.cpu_count()} CPUs visible, "
        f"load average {load_before:.1f} before / {load_after:.1f} after (other jobs share the "
        "CPUs); client and server on the same machine. Command: " + command + ".",
        "",
        "Servers:",
        *[f"- `{c}`" for c in commands],
        "",
        "Single client, one request at a time (bench_latency.py's `measure`: median of >= 3 "
        "calls after 1 warm-up call; REST and gRPC include the client's encoding and decoding; "
        "server without batching):",
        "",
        bench_latency.format_table(latency),
        "",
        "Concurrent clients (closed loop, one 64x64 image per request; server_cpu_ms = the "
        "server process's CPU time per answered request):",
        "",
        markdown_table(rows, COLUMNS),
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


def _latest_version(base: Path) -> Path:
    versions = sorted(int(p.name) for p in Path(base).iterdir() if p.name.isdigit())
    if not versions:
        raise SystemExit(f"{base}: no version folders")
    return Path(base) / str(versions[-1])


if __name__ == "__main__":
    sys.exit(main())
