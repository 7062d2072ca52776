"""A local server with TF Serving's REST (and gRPC) API, for users without Docker.

Serves SavedModels laid out as TF Serving expects (``BASE/<name>/<version>/``)
with the same endpoints, JSON formats, error JSON and status codes (see
``deeplense_tf/serving/json_tensors.py`` and the reference in
``shared/reference/tf-serving-rest.md``), so that the clients, scripts and
dashboards written against it work unchanged against ``tensorflow/serving``.

`ModelServer` only composes the pieces, each in its own module (lowest first):

- ``status``: error codes; ``json_tensors`` / ``json_answers`` / ``examples_json``: TF
  Serving's JSON for predict requests, answers, and classify / regress bodies;
  ``json_numbers``: the compiled reader (server) and writer (client) of big numeric lists;
- ``config``: what to serve (`ModelConfig`, TF Serving's model and monitoring config files,
  labels); ``batching``: dynamic batching; ``metrics``: Prometheus counters and histograms;
- ``servable``: one loaded version (signatures, input checks, the TensorFlow call,
  Classify and Regress);
- ``model_store``: versions on disk -> servables, polling, hot reload, lookups;
- ``rest_api``: TF Serving's REST API as (method, path, body) -> (status, JSON);
- ``http_server``: the HTTP/1.1 plumbing and its limits; ``grpc_server``: the gRPC API.

Differences from TF Serving, on purpose: with no config file every version
found is served (TF Serving's default serves only the newest); a body over
``max_request_bytes`` gets 413; a failing batch does not fail its neighbours.
"""

from __future__ import annotations

import threading

from deeplense_tf.errors import ConfigError
from deeplense_tf.serving.http_server import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_READ_TIMEOUT_S,
    RestHTTPServer,
)
from deeplense_tf.serving.model_store import ModelStore
from deeplense_tf.serving.rest_api import RestApi


class ModelServer:
    """REST (and gRPC) in front of a `ModelStore`.

    Args:
        store: what to serve (started by `start` if it is not already).
        host: address to listen on; 127.0.0.1 unless you mean to expose it.
        rest_port: REST port (0 = any free port; the chosen one is in `rest_port` after `start`).
        grpc_port: gRPC port (0 = any free port, None = no gRPC).
        max_request_bytes: largest request body (REST) or message (gRPC) accepted.
        read_timeout_s: seconds a REST connection has to deliver each complete request.
        max_connections: REST connections served at once (see `http_server`).
        prometheus_path: URL path of the Prometheus metrics (TF Serving's monitoring
            config), None for none.
    """

    def __init__(self, store: ModelStore, *, host: str = "127.0.0.1", rest_port: int = 8501,
                 grpc_port: int | None = 8500,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, grpc_max_workers: int = 32,
                 read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 prometheus_path: str | None = None):
        self.store = store
        self.host = host
        self.rest_port = rest_port
        self.grpc_port = grpc_port
        self.max_request_bytes = int(max_request_bytes)
        self.grpc_max_workers = int(grpc_max_workers)
        self.read_timeout_s = float(read_timeout_s)
        self.max_connections = int(max_connections)
        self.prometheus_path = prometheus_path
        self._http: RestHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._grpc = None
        self._stopped = threading.Event()

    @property
    def rest_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.rest_port}"

    @property
    def grpc_target(self) -> str | None:
        if self.grpc_port is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.grpc_port}"

    def start(self) -> ModelServer:
        """Loads the models, binds the ports and starts answering (in background threads)."""
        if self._http is not None:
            return self
        self.store.start()
        try:
            self._http = RestHTTPServer((self.host, self.rest_port), RestApi(self.store, self.prometheus_path),
                                        self.max_request_bytes, read_timeout_s=self.read_timeout_s,
                                        max_connections=self.max_connections)
        except OSError as err:
            self.store.close()
            raise ConfigError(
                f"--port {self.rest_port}: cannot listen on {self.host}:{self.rest_port} ({err})"
            ) from None
        self.rest_port = self._http.server_address[1]
        self._http_thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.2},
            name="rest-server", daemon=True)
        self._http_thread.start()
        if self.grpc_port is not None:
            try:
                from deeplense_tf.serving.grpc_server import start_grpc_server
            except ImportError as err:
                self.stop()
                raise ConfigError(
                    f"--grpc-port {self.grpc_port}: gRPC needs grpcio and tensorflow-serving-api "
                    f"({err}); install them (`make install`) or pass --grpc-port -1 for REST only"
                ) from None
            try:
                self._grpc, self.grpc_port = start_grpc_server(
                    self.store, self.host, self.grpc_port,
                    max_message_bytes=self.max_request_bytes, max_workers=self.grpc_max_workers)
            except Exception:
                self.stop()
                raise
        return self

    def stop(self) -> None:
        """Stops listening, waits briefly for requests in flight, unloads the models."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace=1.0).wait(5.0)
            self._grpc = None
        self.store.close()
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until `stop` (or `timeout` seconds); True when stopped."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
