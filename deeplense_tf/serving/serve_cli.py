"""`deeplense serve`: TF Serving's REST and gRPC API on the exported SavedModels.

    deeplense serve --model-base-path export/deeplense            # REST :8501, gRPC :8500
    deeplense serve --model-base-path export/deeplense --enable-batching --labels stable=1
    deeplense serve --model-config-file serving/models.config     # TF Serving's config format
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
import threading
from pathlib import Path

from deeplense_tf.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to serve")
    what.add_argument("--model-base-path", type=Path,
                      help="folder with integer version folders (DIR/<name> from `deeplense export`)")
    what.add_argument("--model-name", help="name in URLs (default: the base path's folder name)")
    what.add_argument("--model-config-file", type=Path,
                      help="TF Serving model config (text ModelServerConfig) instead of the two above")
    what.add_argument("--labels", action="append", metavar="LABEL=VERSION",
                      help="version labels, e.g. stable=1,canary=2 (repeatable)")
    what.add_argument("--model-version-policy", choices=["all", "latest"], default="all",
                      help="serve every version folder (default) or only the newest")
    what.add_argument("--file-system-poll-wait-seconds", type=float, default=1.0,
                      help="seconds between scans for new / removed versions (0: scan once)")

    net = parser.add_argument_group("where")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1: this machine only)")
    net.add_argument("--port", type=int, default=8501, help="REST port (default 8501; 0: any free)")
    net.add_argument("--grpc-port", type=int, default=8500,
                     help="gRPC port (default 8500; 0: any free; -1: no gRPC)")
    net.add_argument("--max-request-bytes", type=int, default=32 * 2**20,
                     help="largest request accepted, in bytes (default 32 MiB); larger get 413")
    net.add_argument("--max-request-batch", type=int, default=1024,
                     help="most rows (images) in one request, REST and gRPC (default 1024)")
    net.add_argument("--read-timeout-seconds", type=float, default=30.0,
                     help="seconds a REST connection has to send each complete request, and "
                          "the longest an idle one is kept (default 30)")
    net.add_argument("--max-connections", type=int, default=128,
                     help="REST connections served at once (default 128); at the cap the one "
                          "waiting longest for its request is dropped, or the new one gets 503")

    net.add_argument("--monitoring-config-file", type=Path,
                     help="TF Serving monitoring config; with prometheus_config { enable: true } "
                          "the metrics are at /monitoring/prometheus/metrics (or its path)")

    batch = parser.add_argument_group("dynamic batching")
    batch.add_argument("--enable-batching", action="store_true",
                       help="run concurrent requests together as one model call")
    batch.add_argument("--batching-parameters-file", type=Path,
                       help="TF Serving batching parameters file (implies --enable-batching)")
    batch.add_argument("--max-batch-size", type=int, help="rows per model call (default 32)")
    batch.add_argument("--batch-timeout-micros", type=int,
                       help="longest wait for a batch to fill, microseconds (default 2000)")
    batch.add_argument("--max-enqueued-batches", type=int,
                       help="queue capacity in batches; beyond it requests get 503 (default 100)")
    batch.add_argument("--num-batch-threads", type=int,
                       help="batches run at once (default: number of CPUs)")

    tf_group = parser.add_argument_group("TensorFlow threads (TF Serving's flags of these names)")
    tf_group.add_argument("--tensorflow-intra-op-parallelism", type=int, default=0,
                          help="threads one op may use (0: TensorFlow's choice, all cores); "
                               "with batching, 1 lets each batch thread keep one core busy")
    tf_group.add_argument("--tensorflow-inter-op-parallelism", type=int, default=0,
                          help="ops run at once (0: TensorFlow's choice)")


def _batching_options(args):
    from deeplense_tf.serving.batching import BatchingOptions

    overrides = {name: getattr(args, name) for name in (
        "max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
        if getattr(args, name) is not None}
    if not (args.enable_batching or args.batching_parameters_file):
        if overrides:
            flags = ", ".join("--" + k.replace("_", "-") for k in overrides)
            raise ConfigError(f"{flags} need --enable-batching")
        return None
    if args.batching_parameters_file:
        base = BatchingOptions.from_file(args.batching_parameters_file)
        return BatchingOptions(**{**base.__dict__, **overrides})
    return BatchingOptions(**overrides)


def _set_tensorflow_threads(args) -> None:
    """Applies the TensorFlow thread flags; they must come before TensorFlow's first op."""
    wanted = {"intra": args.tensorflow_intra_op_parallelism,
              "inter": args.tensorflow_inter_op_parallelism}
    for kind, value in wanted.items():
        if value < 0:
            raise ConfigError(f"--tensorflow-{kind}-op-parallelism must be >= 0, got {value}")
    if not any(wanted.values()):
        return
    import tensorflow as tf

    threading_config = tf.config.threading
    for kind, value in wanted.items():
        if not value:
            continue
        get = getattr(threading_config, f"get_{kind}_op_parallelism_threads")
        try:
            getattr(threading_config, f"set_{kind}_op_parallelism_threads")(value)
        except RuntimeError:
            if get() != value:
                raise ConfigError(
                    f"--tensorflow-{kind}-op-parallelism {value}: TensorFlow in this process "
                    f"already runs with {get() or 'its default'}; set it before anything "
                    "else uses TensorFlow (a fresh `deeplense serve` process)") from None


def _models(args):
    from deeplense_tf.serving.config import ModelConfig, parse_labels, read_model_config_file

    if args.model_config_file:
        if args.model_base_path or args.model_name:
            raise ConfigError("--model-config-file replaces --model-base-path / --model-name; "
                              "give one or the other")
        models = read_model_config_file(args.model_config_file)
        if args.labels:
            if len(models) != 1:
                raise ConfigError("--labels: the config file has several models; put "
                                  "version_labels in the config instead")
            models[0].labels.update(parse_labels(args.labels))
    else:
        if args.model_base_path is None:
            raise ConfigError("give --model-base-path DIR/<name> (or --model-config-file)")
        base = args.model_base_path
        models = [ModelConfig(name=args.model_name or base.resolve().name, base_path=base,
                              labels=parse_labels(args.labels),
                              version_policy=args.model_version_policy)]
    for model in models:
        if not model.base_path.is_dir():
            raise ConfigError(f"model {model.name}: base path {model.base_path} is not a folder "
                              "(expected DIR/<name> holding version folders 1/, 2/ ...)")
    return models


def build_server(args):
    """The (not yet started) `ModelServer` the parsed `args` describe; ConfigError on bad options."""
    from deeplense_tf.serving.model_store import ModelStore
    from deeplense_tf.serving.server import ModelServer

    for flag, port in (("--port", args.port), ("--grpc-port", args.grpc_port)):
        if not -1 <= port <= 65535 or (flag == "--port" and port < 0):
            raise ConfigError(f"{flag} must be a port number, got {port}")
    if args.max_request_bytes < 1024:
        raise ConfigError(f"--max-request-bytes must be at least 1024, got {args.max_request_bytes}")
    if args.max_request_batch < 1:
        raise ConfigError(f"--max-request-batch must be >= 1, got {args.max_request_batch}")
    if not args.read_timeout_seconds > 0:
        raise ConfigError(f"--read-timeout-seconds must be > 0, got {args.read_timeout_seconds}")
    if args.max_connections < 1:
        raise ConfigError(f"--max-connections must be >= 1, got {args.max_connections}")
    if args.file_system_poll_wait_seconds < 0:
        raise ConfigError("--file-system-poll-wait-seconds must be >= 0")
    models = _models(args)
    _set_tensorflow_threads(args)
    prometheus_path = None
    if args.monitoring_config_file:
        from deeplense_tf.serving.config import read_monitoring_config_file

        prometheus_path = read_monitoring_config_file(args.monitoring_config_file)
    store = ModelStore(models, poll_interval_s=args.file_system_poll_wait_seconds,
                       batching=_batching_options(args), max_request_batch=args.max_request_batch)
    return ModelServer(store, host=args.host, rest_port=args.port,
                       grpc_port=None if args.grpc_port < 0 else args.grpc_port,
                       max_request_bytes=args.max_request_bytes,
                       read_timeout_s=args.read_timeout_seconds,
                       max_connections=args.max_connections, prometheus_path=prometheus_path)


def run(args) -> int:
    server = build_server(args)
    store = server.store
    models = store.models
    server.start()
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (docker stop, kill) shuts down as cleanly as Ctrl-C.
        signal.signal(signal.SIGTERM, lambda *_: server.stop())
    try:
        if not _is_loopback(args.host):
            print(f"warning: listening on {args.host}: reachable from other machines",
                  file=sys.stderr)
        for model in models:
            versions = [s["version"] for s in store.model_status(model.name)
                        if s["state"] == "AVAILABLE"] if _has_versions(store, model.name) else []
            print(f"model {model.name}: versions {sorted(versions) or 'none yet'} "
                  f"from {model.base_path}" + (f", labels {model.labels}" if model.labels else ""))
            print(f"  REST  {server.rest_url}/v1/models/{model.name}")
        if server.grpc_target:
            print(f"  gRPC  {server.grpc_target}")
        if server.prometheus_path:
            print(f"  metrics {server.rest_url}{server.prometheus_path}")
        if store.batching:
            b = store.batching
            print(f"  batching: max {b.max_batch_size} rows, timeout {b.batch_timeout_micros} us, "
                  f"{b.num_batch_threads} threads")
        if args.tensorflow_intra_op_parallelism or args.tensorflow_inter_op_parallelism:
            print(f"  TensorFlow threads: intra-op {args.tensorflow_intra_op_parallelism or 'default'}"
                  f", inter-op {args.tensorflow_inter_op_parallelism or 'default'}")
        print("Ctrl-C to stop", flush=True)
        server.wait()
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
    finally:
        server.stop()
    return 0


def _has_versions(store, name: str) -> bool:
    from deeplense_tf.serving.status import ServingError

    try:
        store.model_status(name)
        return True
    except ServingError:
        return False


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
