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

from deeplense_tf._lazy import lazy_exports

_EXPORTS = {
    "RestClient": "rest_client",
    "GrpcClient": "grpc_client",
    "ServingError": "status",
    "BatchingOptions": "batching",
    "ModelConfig": "config",
    "ModelStore": "model_store",
    "ModelServer": "server",
    "read_model_config_file": "config",
    "run_load": "loadtest",
    "LoadResult": "loadtest",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
