"""Load-test a TF Serving endpoint (tensorflow/serving or `deeplense serve`) serving a deeplense export.

    python serving/loadtest.py                                   # REST on 127.0.0.1:8501
    python serving/loadtest.py --grpc 127.0.0.1:8500 --concurrency 1,8,32 --requests 500
    python serving/loadtest.py --url http://127.0.0.1:8501 --label stable --images-per-request 4

Closed loop: C threads each send their next request as soon as the last one is answered.
Prints p50 / p99 latency and throughput per concurrency level. Every run is bounded by
--requests and --max-seconds; point it only at servers you operate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deeplense_tf.serving.loadtest import markdown_table, run_load  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8501", help="REST root URL")
    parser.add_argument("--grpc", metavar="HOST:PORT", help="use gRPC at this address instead")
    parser.add_argument("--model", default="deeplense", help="model name")
    parser.add_argument("--signature", default=None, help="signature (default serving_default)")
    parser.add_argument("--version", type=int, help="pin a version")
    parser.add_argument("--label", help="pin a version label")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated levels")
    parser.add_argument("--requests", type=int, default=200, help="requests per level")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time cap per level")
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]

    if args.grpc:
        from deeplense_tf.serving.grpc_client import GrpcClient

        client = GrpcClient(args.grpc, args.model, timeout=args.timeout, retries=0)
        where = f"gRPC {args.grpc}"
    else:
        from deeplense_tf.serving.rest_client import RestClient

        client = RestClient(args.url, args.model, timeout=args.timeout, retries=0)
        where = f"REST {args.url}"
    meta = client.metadata(version=args.version, label=args.label)
    signature = args.signature or "serving_default"
    inputs = meta["signatures"][signature]["inputs"]
    if len(inputs) != 1:
        parser.error(f"signature {signature} has inputs {list(inputs)}; this script sends one image input")
    (name, info), = inputs.items()
    shape = [args.images_per_request] + [d if d > 0 else 1 for d in info["shape"][1:]]
    images = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    print(f"{where}: model {meta['name']} version {meta['version']}, signature {signature}, "
          f"input {name} {shape}")

    # One request, encoded once and sent again and again: this measures the server.
    if args.grpc:
        request = client.make_request({name: images}, signature=args.signature,
                                      version=args.version, label=args.label)

        def call():
            return client.predict_request(request)
    else:
        # A bare array (not {name: ...} per instance): the server's fast JSON path reads it.
        body = client.encode_predict(images, signature=args.signature)

        def call():
            return client.predict_encoded(body, signature=args.signature, version=args.version,
                                          label=args.label)

    rows = []
    for concurrency in levels:
        result = run_load(call, concurrency=concurrency, num_requests=args.requests,
                          max_seconds=args.max_seconds)
        rows.append(result.summary())
        print(f"  c={concurrency}: {result.summary()}", flush=True)
        if result.error_samples:
            print(f"    first error: {result.error_samples[0]}")
    print()
    print(markdown_table(rows, ["concurrency", "requests", "errors", "p50_ms", "p99_ms",
                                "throughput_rps"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
