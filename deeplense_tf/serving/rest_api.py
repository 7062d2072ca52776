"""TF Serving's REST API as a function: (method, path, body) -> (HTTP status, JSON bytes).

`RestApi` routes TF Serving's URLs (``/v1/models/<name>[/versions/N|/labels/L]`` with
``:predict``, ``:classify``, ``:regress`` or ``/metadata``) to a `ModelStore`. It has no
socket code: `deeplense_tf.serving.http_server` puts it behind HTTP, and tests drive it
directly.
"""

from __future__ import annotations

import json
import logging
import re
import time
from urllib.parse import unquote

from deeplense_tf.serving import json_numbers
from deeplense_tf.serving.examples_json import (
    encode_classify_results,
    encode_regress_results,
    parse_examples_body,
)
from deeplense_tf.serving.json_answers import encode_predict_response
from deeplense_tf.serving.json_tensors import parse_predict_body, request_inputs
from deeplense_tf.serving.metadata import status_json
from deeplense_tf.serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from deeplense_tf.serving.model_store import ModelStore
from deeplense_tf.serving.servable import DEFAULT_SIGNATURE
from deeplense_tf.serving.status import (
    ServingError,
    invalid_argument,
    not_found,
)

log = logging.getLogger("deeplense_tf.serving")

# TF Serving's URL grammar (http_rest_api_util.cc), case-insensitive like its RE2 patterns.
_PREDICT_RE = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)")
_STATUS_RE = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
_V1_RE = re.compile(r"(?i)/v1/")
JSON_CONTENT_TYPE = "application/json"


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode("utf-8")


class RestApi:
    """TF Serving's REST API over a `ModelStore`, without any socket code.

    Args:
        store: what to serve; its `metrics` count the predict / classify / regress answers.
        prometheus_path: where ``GET`` answers the metrics in Prometheus' text format
            (TF Serving's monitoring config), or None for no metrics endpoint.
    """

    def __init__(self, store: ModelStore, prometheus_path: str | None = None):
        self.store = store
        self.prometheus_path = prometheus_path
        # Compiling the JSON number reader (or loading it from numba's cache) takes 1-10 s:
        # here, not in the first client's request.
        json_numbers.warm_up()

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        """Answers one request: (HTTP status, body). Never raises."""
        status, _content_type, payload = self.respond(method, path, body)
        return status, payload

    def respond(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        """Answers one request: (HTTP status, content type, body). Never raises."""
        method = method.upper()
        if self.prometheus_path is not None and path == self.prometheus_path and method == "GET":
            return 200, METRICS_CONTENT_TYPE, self.store.metrics.render().encode("utf-8")
        match = _PREDICT_RE.fullmatch(path) if method == "POST" else None
        started = time.perf_counter()
        version = [None]  # the version that answered, once known
        try:
            payload = self._dispatch(method, path, body, match, version)
            status, code = 200, "OK"
        except ServingError as err:
            status, code, payload = err.http_status, err.code, error_body(err.message)
        except RecursionError:
            # Only a body nested thousands of levels deep gets here (the JSON reader's own
            # limit catches most): the client's error, not ours.
            status, code = 400, "INVALID_ARGUMENT"
            payload = error_body("JSON Parse error: the document is nested too deeply")
        except Exception as err:  # noqa: BLE001 - a bug answers 500, the server keeps serving
            log.exception("error answering %s %s", method, path)
            status, code = 500, "INTERNAL"
            payload = error_body(f"Internal error: {type(err).__name__}: {err}")
        if match:
            self.store.metrics.record_request(
                unquote(match.group(1)), version[0], match.group(4).lower(), "REST", code,
                time.perf_counter() - started)
        return status, JSON_CONTENT_TYPE, payload

    def _dispatch(self, method: str, path: str, body: bytes, match, version: list) -> bytes:
        if not _V1_RE.match(path):
            raise not_found(f"No handler for {method} {path}: the API is under /v1/models/")
        if match:
            name, number, label, verb = match.groups()
            name, number, label, verb = unquote(name), _version(number), _label(label), verb.lower()
            if verb == "predict":
                return self._predict(name, number, label, body, version)
            return self._classify_or_regress(name, number, label, verb, body, version)
        match = _STATUS_RE.fullmatch(path) if method == "GET" else None
        if match:
            name, number, label, sub = match.groups()
            if not name:
                raise invalid_argument("Missing model name in request.")
            name, number, label = unquote(name), _version(number), _label(label)
            if sub:
                doc = self.store.metadata(name, number, label)
            else:
                doc = status_json(self.store.model_status(name, number, label))
            return json.dumps(doc, indent=1).encode("utf-8")
        raise invalid_argument(f"Malformed request: {method} {path}")

    def _predict(self, name, number, label, body, version: list) -> bytes:
        # TF Serving's order: the body is parsed before the model is looked up.
        request = parse_predict_body(body)
        servable = self.store.servable(name, number, label)
        version[0] = servable.version
        sig_name = request.signature_name or DEFAULT_SIGNATURE
        sig = servable.signatures.get(sig_name)
        if sig is None:
            raise invalid_argument(f'Serving signature name: "{sig_name}" not found in signature def')
        inputs, fmt = request_inputs(request, sig.inputs)
        outputs = servable.run(sig_name, inputs)
        return encode_predict_response(outputs, fmt)

    def _classify_or_regress(self, name, number, label, verb, body, version: list) -> bytes:
        request = parse_examples_body(body)
        servable = self.store.servable(name, number, label)
        version[0] = servable.version
        if verb == "classify":
            return encode_classify_results(servable.classify(request.signature_name,
                                                             request.examples))
        return encode_regress_results(servable.regress(request.signature_name, request.examples))


def _version(text: str | None) -> int | None:
    if not text:
        return None
    value = int(text)
    if value >= 2**63:
        raise invalid_argument(f"Failed to convert version: {text} to numeric.")
    return value


def _label(text: str | None) -> str | None:
    return unquote(text) if text else None


