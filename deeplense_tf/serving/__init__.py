"""Serving: TF Serving REST / gRPC clients and a local TF Serving-compatible server.

- `RestClient` (stdlib HTTP + numpy, no TensorFlow import) and `GrpcClient`
  (``tensorflow-serving-api`` stubs): status, metadata, predict (row or
  columnar), versions and labels, timeouts, retries on 503 / UNAVAILABLE;
  errors raise `ServingError` carrying the server's message.
- `ModelStore` + `ModelServer`: what ``deeplense serve`` runs.
- `BatchingOptions`: dynamic batching settings.

Names are imported on first use, so ``from deeplense_tf.serving import RestClient``
does not pull in TensorFlow or gRPC.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RestClient": "deeplense_tf.serving.rest_client",
    "GrpcClient": "deeplense_tf.serving.grpc_client",
    "ServingError": "deeplense_tf.serving.status",
    "BatchingOptions": "deeplense_tf.serving.batching",
    "ModelConfig": "deeplense_tf.serving.server",
    "ModelStore": "deeplense_tf.serving.server",
    "ModelServer": "deeplense_tf.serving.server",
    "read_model_config_file": "deeplense_tf.serving.server",
    "run_load": "deeplense_tf.serving.loadtest",
    "LoadResult": "deeplense_tf.serving.loadtest",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deeplense_tf.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
