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
from urllib.parse import unquote

from deeplense_tf.serving.json_tensors import (
    encode_predict_response,
    parse_predict_body,
    request_inputs,
)
from deeplense_tf.serving.metadata import status_json
from deeplense_tf.serving.model_store import ModelStore
from deeplense_tf.serving.servable import DEFAULT_SIGNATURE
from deeplense_tf.serving.status import (
    ServingError,
    failed_precondition,
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


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode("utf-8")


class RestApi:
    """TF Serving's REST API over a `ModelStore`, without any socket code."""

    def __init__(self, store: ModelStore):
        self.store = store

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        """Answers one request: (HTTP status, JSON body). Never raises."""
        try:
            return 200, self._dispatch(method.upper(), path, body)
        except ServingError as err:
            return err.http_status, error_body(err.message)
        except RecursionError:
            # Only a body nested thousands of levels deep gets here (the JSON reader's own
            # limit catches most): the client's error, not ours.
            return 400, error_body("JSON Parse error: the document is nested too deeply")
        except Exception as err:  # noqa: BLE001 - a bug answers 500, the server keeps serving
            log.exception("error answering %s %s", method, path)
            return 500, error_body(f"Internal error: {type(err).__name__}: {err}")

    def _dispatch(self, method: str, path: str, body: bytes) -> bytes:
        if not _V1_RE.match(path):
            raise not_found(f"No handler for {method} {path}: the API is under /v1/models/")
        match = _PREDICT_RE.fullmatch(path) if method == "POST" else None
        if match:
            name, version, label, verb = match.groups()
            return self._predict(unquote(name), _version(version), _label(label), verb.lower(), body)
        match = _STATUS_RE.fullmatch(path) if method == "GET" else None
        if match:
            name, version, label, sub = match.groups()
            if not name:
                raise invalid_argument("Missing model name in request.")
            name, version, label = unquote(name), _version(version), _label(label)
            if sub:
                doc = self.store.metadata(name, version, label)
            else:
                doc = status_json(self.store.model_status(name, version, label))
            return json.dumps(doc, indent=1).encode("utf-8")
        raise invalid_argument(f"Malformed request: {method} {path}")

    def _predict(self, name, version, label, verb, body) -> bytes:
        request = parse_predict_body(body)
        servable = self.store.servable(name, version, label)
        sig_name = request.signature_name or DEFAULT_SIGNATURE
        sig = servable.signatures.get(sig_name)
        if sig is None:
            raise invalid_argument(f'Serving signature name: "{sig_name}" not found in signature def')
        if verb != "predict":
            wanted = f"tensorflow/serving/{'classify' if verb == 'classify' else 'regress'}"
            if sig.method_name == wanted:
                raise ServingError("UNIMPLEMENTED", f":{verb} is not served here; use :predict")
            raise failed_precondition(
                f"Expected {verb} signature method_name to be {wanted}. Was: {sig.method_name}")
        inputs, fmt = request_inputs(request, sig.inputs)
        outputs = servable.run(sig_name, inputs)
        return encode_predict_response(outputs, fmt)


def _version(text: str | None) -> int | None:
    if not text:
        return None
    value = int(text)
    if value >= 2**63:
        raise invalid_argument(f"Failed to convert version: {text} to numeric.")
    return value


def _label(text: str | None) -> str | None:
    return unquote(text) if text else None


