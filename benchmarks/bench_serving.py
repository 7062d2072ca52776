"""Latency and throughput of `deeplense serve` over REST and gRPC, with and without batching.

    .venv/bin/python benchmarks/bench_serving.py --config configs/benchmark-model2-cnn_lstm.yaml
    .venv/bin/python benchmarks/bench_serving.py                      # bench_latency.py's resnet
    .venv/bin/python benchmarks/bench_serving.py --model-base-path export/deeplense --out serving.md

Everything is measured side by side in one run, so the ratios hold even on a shared machine:

1. Single client, one request at a time, at batch 1 and 64: the SavedModel called in
   process, and REST and gRPC against the local server (no batching), their calls
   interleaved round by round (one call of each row per round), medians per row. Gives the
   REST / gRPC ratio at batch 64 and the server's overhead at batch 1 (concurrency 1) over
   the in-process call.
2. Concurrency: one `deeplense serve` subprocess per server setting (off, and each
   setting of `--sweep`: batching parameters, optionally TensorFlow's intra-op threads),
   all started before any load; closed-loop clients at
   C = 1, 8, 32 (one 64x64 image per request). Each round visits every server in turn, so
   every setting sees the same machine load; throughput is the median over rounds, and
   "x off" divides it by the unbatched server's in the same rounds, and "x off same tf" by
   the unbatched server's with the same TensorFlow threads (an off:N setting of the sweep).

`--config FILE` exports the architecture of an experiment config (model section) with its
initial weights: the same graph, hence the same compute per image, as the trained model.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
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
           "throughput_rps", "x_off", "x_off_same_tf", "server_cpu_ms"]
# max_batch_size:batch_timeout_micros:num_batch_threads
DEFAULT_SWEEP = "8:1000:1,16:2000:1,32:2000:1,32:5000:1,32:2000:2,64:5000:1"


def build_benchmark_export(out_dir: Path, model_name: str = "resnet", options: str = "{}",
                           config: Path | None = None, image_size: int = 64):
    """The benchmark model exported as `out_dir/deeplense/1`.

    With `config`, the experiment config's model (name, head, normalization, crop,
    options) built with its initial weights; else bench_latency.py's untrained model.
    Returns (base path, images [64, H, W, 1], description).
    """
    import bench_latency

    from deeplense_tf.export.savedmodel import write_saved_model

    if config is not None:
        model, spec, images, what = _config_model(config, image_size)
    else:
        # bench_latency's own definition of "the benchmark model" (untrained, 64x64, crop
        # 48, its --model / --options), so both benchmarks time the same graph.
        model, spec, _calibration, images, what = bench_latency._model_and_images(
            Namespace(run=None, model=model_name, image_size=image_size, crop=48, options=options))
    base = out_dir / "deeplense"
    write_saved_model(model, spec, base / "1", model_name="deeplense", warmup_images=images[:1])
    return base, images, what


def _config_model(config: Path, image_size: int):
    import keras
    import yaml

    from deeplense_tf.export.spec import ExportSpec
    from deeplense_tf.models import build_model

    section = yaml.safe_load(Path(config).read_text())["model"]
    targets = ["log10_m_axion_ev"]
    shape = (image_size, image_size, 1)
    keras.utils.set_random_seed(0)
    model = build_model(section["name"], shape, targets, head=section.get("head", "gaussian"),
                        normalization=section.get("normalization", "peak_asinh"),
                        crop=section.get("crop"), **(section.get("options") or {}))
    spec = ExportSpec(section["name"], tuple(targets), section.get("head", "gaussian"), shape,
                      {"log10_m_axion_ev": {"mean": -23.0, "std": 0.58}})
    images = np.random.default_rng(0).gamma(0.5, 1.0, size=(64, *shape)).astype(np.float32)
    what = (f"{section['name']} from {config} with its initial weights (untrained: the same "
            f"graph and compute per image as the trained model), {model.count_params():,} "
            f"parameters, {image_size}x{image_size} px")
    return model, spec, images, what


class ServeProcess:
    """`deeplense serve` in a subprocess; its REST URL and gRPC target once it is up."""

    def __init__(self, base_path: Path, extra_args: list[str], timeout_s: float = 300.0):
        cmd = [sys.executable, "-m", "deeplense_tf", "serve", "--model-base-path", str(base_path),
               "--host", "127.0.0.1", "--port", "0", "--grpc-port", "0",
               "--file-system-poll-wait-seconds", "0", *extra_args]
        self.command = " ".join(["deeplense", *cmd[3:]])
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        self.rest_url = self.grpc_target = None
        self._timeout_s = timeout_s

    def wait_ready(self) -> ServeProcess:
        lines = []
        deadline = time.monotonic() + self._timeout_s
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
                return self
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


def interleaved(rows: dict, images: np.ndarray, batch_sizes=(1, 64), *, seconds: float = 3.0,
                min_rounds: int = 5, warmup: int = 2) -> list[dict]:
    """Median latency of each row, calls interleaved: round k calls every row once."""
    results = []
    for batch in batch_sizes:
        reps = int(np.ceil(batch / len(images)))
        x = np.ascontiguousarray(np.concatenate([images] * reps)[:batch], np.float32)
        for predict in rows.values():
            for _ in range(warmup):
                predict(x)
        times = {label: [] for label in rows}
        start = time.perf_counter()
        while len(times[next(iter(rows))]) < min_rounds or time.perf_counter() - start < seconds:
            for label, predict in rows.items():
                t0 = time.perf_counter()
                predict(x)
                times[label].append(time.perf_counter() - t0)
        for label, spent in times.items():
            median = statistics.median(spent)
            results.append({"row": label, "batch": batch, "calls": len(spent),
                            "median_ms": 1e3 * median, "images_per_s": batch / median})
            print(f"  {label:28s} batch {batch:3d}: {1e3 * median:9.2f} ms "
                  f"({len(spent)} calls)", flush=True)
    return results


def _cell(protocol: str, call, server: ServeProcess, concurrency: int, requests: int,
          max_seconds: float) -> dict:
    cpu_at_start = []
    result = run_load(call, concurrency=concurrency, num_requests=requests, max_seconds=max_seconds,
                      on_start=lambda: cpu_at_start.append(process_cpu_seconds(server.proc.pid)))
    cpu_end = process_cpu_seconds(server.proc.pid)
    row = {"protocol": protocol, **result.summary()}
    if cpu_end is not None and cpu_at_start[0] is not None and result.requests:
        # CPU the server spent per answer: unlike wall-clock numbers, it does not depend on
        # what else the machine is running.
        row["server_cpu_ms"] = round((cpu_end - cpu_at_start[0]) / result.requests * 1e3, 2)
    if result.error_samples:
        row["first_error"] = result.error_samples[0][:200]
    return row


def concurrency_rows(servers: dict[str, ServeProcess], image: np.ndarray, *, rounds: int,
                     requests: int, max_seconds: float, levels=CONCURRENCY,
                     sweep_levels=(32,)) -> list[dict]:
    """Throughput per server, protocol and concurrency; medians over `rounds` visits."""
    from deeplense_tf.serving.grpc_client import GrpcClient
    from deeplense_tf.serving.rest_client import RestClient

    clients = {}
    for label, server in servers.items():
        rest = RestClient(server.rest_url, "deeplense", timeout=120, retries=1)
        grpc_client = GrpcClient(server.grpc_target, "deeplense", timeout=120, retries=1)
        body, request = rest.encode_predict(image), grpc_client.make_request(image)
        clients[label] = {
            "REST": lambda rest=rest, body=body: rest.predict_encoded(body),
            "gRPC": lambda g=grpc_client, r=request: g.predict_request(r),
        }
    cells: dict[tuple, list[dict]] = {}
    for round_index in range(rounds):
        for label, server in servers.items():
            wanted = levels if label in ("off", _main_setting(servers)) else sweep_levels
            for concurrency in wanted:
                for protocol, call in clients[label].items():
                    row = _cell(protocol, call, server, concurrency,
                                max(requests, 8 * concurrency), max_seconds)
                    cells.setdefault((label, protocol, concurrency), []).append(row)
                    print(f"  round {round_index + 1} {label:12s} {protocol:4s} c={concurrency:2d}: "
                          f"{row['throughput_rps']:7.1f} req/s p50 {row['p50_ms']:7.2f} ms "
                          f"cpu {row.get('server_cpu_ms', '?')} ms/req errors {row['errors']}",
                          flush=True)
    rows = []
    for (label, _protocol, _concurrency), seen in cells.items():
        merged = dict(seen[len(seen) // 2])
        merged.update(
            batching=label, requests=sum(r["requests"] for r in seen),
            errors=sum(r["errors"] for r in seen),
            throughput_rps=round(statistics.median(r["throughput_rps"] for r in seen), 1),
            p50_ms=round(statistics.median(r["p50_ms"] for r in seen), 2),
            p99_ms=round(statistics.median(r["p99_ms"] for r in seen), 2))
        cpu = [r["server_cpu_ms"] for r in seen if "server_cpu_ms" in r]
        if cpu:
            merged["server_cpu_ms"] = round(statistics.median(cpu), 2)
        rows.append(merged)
    for row in rows:
        for column, baseline in (("x_off", "off"), ("x_off_same_tf", _same_threads(row["batching"]))):
            off = next((r for r in rows if r["batching"] == baseline
                        and r["protocol"] == row["protocol"]
                        and r["concurrency"] == row["concurrency"]), None)
            if off and off["throughput_rps"]:
                row[column] = round(row["throughput_rps"] / off["throughput_rps"], 2)
    return rows


def _same_threads(setting: str) -> str:
    """The unbatched setting with the same TensorFlow intra-op threads: 32:2000:2:1 -> off:1."""
    fields = setting.split(":")
    return f"off:{fields[3]}" if len(fields) == 4 else ("off" if fields[0] != "off" else setting)


def _main_setting(servers: dict) -> str | None:
    return next((label for label in servers if label != "off"), None)


def _batching_flags(setting: str) -> list[str]:
    """`deeplense serve` flags for SIZE:TIMEOUT_US:THREADS[:INTRA] or off:INTRA."""
    fields = setting.split(":")
    intra = []
    if fields[0] == "off" and len(fields) == 2:
        return ["--tensorflow-intra-op-parallelism", fields[1]]
    if len(fields) == 4:
        intra = ["--tensorflow-intra-op-parallelism", fields.pop()]
    if len(fields) != 3:
        raise SystemExit(f"--sweep: {setting!r} is not SIZE:TIMEOUT_US:THREADS[:INTRA] or off:INTRA")
    size, timeout, threads = fields
    return ["--enable-batching", "--max-batch-size", size, "--batch-timeout-micros", timeout,
            "--num-batch-threads", threads, *intra]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base-path", type=Path,
                        help="DIR/<name> with version folders (default: export a benchmark model)")
    parser.add_argument("--config", type=Path,
                        help="experiment config whose model to export with its initial weights")
    parser.add_argument("--model", default="resnet",
                        help="architecture to export without --config (as bench_latency.py)")
    parser.add_argument("--options", default="{}",
                        help='builder options as JSON without --config, e.g. \'{"width": 16}\'')
    parser.add_argument("--sweep", default=DEFAULT_SWEEP,
                        help="server settings, comma-separated: batching as "
                             "max_batch_size:timeout_us:threads[:intra_op_threads], or off:N for "
                             "no batching with N intra-op threads; the first is also measured "
                             "at every concurrency")
    parser.add_argument("--rounds", type=int, default=3, help="visits of every server")
    parser.add_argument("--requests", type=int, default=64,
                        help="requests per cell and round (at least 8 x concurrency)")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="time cap per cell")
    parser.add_argument("--latency-seconds", type=float, default=6.0,
                        help="time per batch size of the interleaved single-client rows")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import bench_latency

    from deeplense_tf.serving.grpc_client import GrpcClient
    from deeplense_tf.serving.rest_client import RestClient

    started = time.perf_counter()
    uptime_before = _uptime()
    settings = [s.strip() for s in args.sweep.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        images = None
        if args.model_base_path is None:
            print("exporting the benchmark model ...", flush=True)
            base, images, what = build_benchmark_export(Path(tmp), args.model, args.options,
                                                        args.config)
        else:
            base, what = args.model_base_path, f"export {args.model_base_path}"
        servers = {"off": ServeProcess(base, [])}
        for setting in settings:
            servers[setting] = ServeProcess(base, _batching_flags(setting))
        try:
            for server in servers.values():
                server.wait_ready()
            off = servers["off"]
            rest = RestClient(off.rest_url, "deeplense", timeout=120, retries=1)
            grpc_client = GrpcClient(off.grpc_target, "deeplense", timeout=120, retries=1)
            if images is None:
                size = rest.metadata()["signatures"]["serving_default"]["inputs"]["image"]["shape"][1]
                images = np.random.default_rng(1).gamma(
                    0.5, 1.0, size=(64, size, size, 1)).astype(np.float32)
            versions = sorted(int(p.name) for p in Path(base).iterdir() if p.name.isdigit())
            rows = {"SavedModel in process": bench_latency.saved_model_row(Path(base) / str(versions[-1])),
                    "REST, local server": lambda x: rest.predict(x),
                    "gRPC, local server": lambda x: grpc_client.predict(x)}
            print("single client (interleaved rounds):", flush=True)
            latency = interleaved(rows, images, seconds=args.latency_seconds)
            print("concurrency:", flush=True)
            table = concurrency_rows(servers, images[:1], rounds=args.rounds,
                                     requests=args.requests, max_seconds=args.max_seconds)
        finally:
            for server in servers.values():
                server.stop()
    uptime_after = _uptime()
    text = _report(args, what, servers, latency, table, settings, uptime_before, uptime_after,
                   time.perf_counter() - started)
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")
        print(f"wrote {args.out}")
    return 0


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def _report(args, what, servers, latency, table, settings, before, after, wall) -> str:
    import bench_latency

    flags = [f"--model-base-path {args.model_base_path}"] if args.model_base_path else []
    flags += [f"--config {args.config}"] if args.config else []
    flags += [f"--model {args.model}"] if args.model != "resnet" and not args.config else []
    flags += [f"--options '{args.options}'"] if args.options != "{}" and not args.config else []
    flags += [f"--sweep {args.sweep}"] if args.sweep != DEFAULT_SWEEP else []
    flags += [f"--rounds {args.rounds}"] if args.rounds != 3 else []
    flags += [f"--requests {args.requests}"] if args.requests != 64 else []
    flags += [f"--latency-seconds {args.latency_seconds:g}"] if args.latency_seconds != 6.0 else []
    command = " ".join([".venv/bin/python benchmarks/bench_serving.py", *flags])
    cell = {(r["row"], r["batch"]): r["median_ms"] for r in latency}
    ratio = cell[("REST, local server", 64)] / cell[("gRPC, local server", 64)]
    lines = [
        f"Model: {what}. Machine: {platform.machine()}, {os.cpu_count()} CPUs; `uptime` before: "
        f"`{before}`, after: `{after}` (the cores are shared with other jobs; client and "
        f"servers on the same machine). Command: `{command}` ({wall:.0f} s).",
        "",
        "Servers:", *[f"- `{s.command}`" for s in servers.values()], "",
        "Single client, one request at a time, calls interleaved round by round (median ms; "
        "REST and gRPC include the client's encoding and decoding; server without batching):",
        "", bench_latency.format_table(latency), "",
        f"- REST / gRPC at batch 64: x{ratio:.2f}",
    ]
    for protocol in ("REST", "gRPC"):
        overhead = cell[(f"{protocol}, local server", 1)] - cell[("SavedModel in process", 1)]
        lines.append(f"- {protocol} at batch 1, concurrency 1: {overhead:+.2f} ms over the "
                     "in-process SavedModel call")
    main_setting = settings[0] if settings else None
    order = {label: i for i, label in enumerate(["off", *settings])}
    main_rows = sorted((r for r in table if r["batching"] in ("off", main_setting)),
                       key=lambda r: (r["protocol"], order[r["batching"]], r["concurrency"]))
    sweep_rows = sorted((r for r in table if r["concurrency"] == 32),
                        key=lambda r: (r["protocol"], order[r["batching"]]))
    lines += [
        "", f"Concurrent clients (closed loop, one image per request; medians over {args.rounds} "
        "rounds; batching = max_batch_size:batch_timeout_micros:num_batch_threads[:TensorFlow "
        "intra-op threads], off:N = no batching with N intra-op threads; x_off = "
        "throughput over the unbatched server's (TensorFlow's default threads) in the same "
        "rounds, x_off_same_tf = over the unbatched server with the same intra-op threads "
        "(off:N; blank where the sweep has none); server_cpu_ms = the server "
        "process's CPU time per answered request):", "",
        markdown_table(main_rows, COLUMNS), "",
        "Batching sweep at concurrency 32:", "", markdown_table(sweep_rows, COLUMNS),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
