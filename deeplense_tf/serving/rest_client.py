"""Client for TF Serving's REST API (``tensorflow/serving`` or ``deeplense serve``).

Standard library HTTP plus numpy; no TensorFlow import. Each thread keeps its
own keep-alive connection, so one client can be shared by a thread pool.

Example::

    client = RestClient("http://127.0.0.1:8501", model="deeplense")
    out = client.predict(images)             # images: float32 [N, H, W, 1]
    out["log10_m_axion_ev"], out["log10_m_axion_ev_std"]   # float32 [N] each
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from urllib.parse import quote, urlsplit

import numpy as np

from deeplense_tf.serving.json_answers import input_to_json, json_to_output
from deeplense_tf.serving.metadata import parse_metadata, parse_status
from deeplense_tf.serving.status import ServingError, code_for_http_status
from deeplense_tf.serving.status import wait_until_available as wait_for_version

try:  # the `serving` extra; without it bodies are written by the json module
    import orjson as _orjson
except ImportError:  # pragma: no cover - installed with the serving extra
    _orjson = None


# float32 arrays of this many numbers (16 images of 64x64) or more are written by
# json_numbers' compiled writer in two threads: ~30% less time than orjson on two idle
# cores, and no GIL held meanwhile.
_COMPILED_WRITER_NUMBERS = 1 << 16
_ORJSON_DTYPES = {np.dtype(t) for t in (np.float32, np.float64, np.int32, np.int64, np.uint8,
                                        np.bool_)}


class RestClient:
    """Talks to one model over TF Serving's REST API.

    Args:
        url: server root, e.g. ``http://127.0.0.1:8501``.
        model: model name (``/v1/models/<model>``).
        timeout: seconds to wait for each answer.
        retries: extra attempts after a 503 or a refused / dropped connection.
        backoff_s: wait before the first retry, doubled for each further one.
        float_dtype: dtype of floating outputs (JSON carries no dtype); None keeps float64.

    Every method raises `ServingError` (``code``, ``message`` from the server,
    ``http_status``) when the server answers with an error.
    """

    def __init__(self, url: str = "http://127.0.0.1:8501", model: str = "deeplense", *,
                 timeout: float = 30.0, retries: int = 3, backoff_s: float = 0.1,
                 float_dtype=np.float32):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._scheme = parts.scheme
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self.model = model
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.float_dtype = float_dtype
        self._local = threading.local()
        self._output_names: dict[tuple, list[str]] = {}

    # -- public API

    def status(self, version: int | None = None, label: str | None = None) -> list[dict]:
        """Version states: ``[{"version", "state", "error_code", "error_message"}]``."""
        return parse_status(self._get_json(self._model_path(version, label)))

    def metadata(self, version: int | None = None, label: str | None = None) -> dict:
        """Model spec and signatures (see `deeplense_tf.serving.metadata.parse_metadata`)."""
        return parse_metadata(self._get_json(self._model_path(version, label) + "/metadata"))

    def wait_until_available(self, timeout: float = 60.0, version: int | None = None,
                             label: str | None = None) -> list[dict]:
        """Polls `status` until a version is AVAILABLE; raises `ServingError` after `timeout` s."""
        return wait_for_version(lambda: self.status(version, label),
                                f"model {self.model} at {self.url}", timeout)

    def encode_predict(self, inputs, *, signature: str | None = None,
                       columnar: bool = False) -> bytes:
        """The JSON body of a predict request (what `predict` sends).

        `inputs` is an array (a signature with one input) or a dict of arrays by
        input name, all with the same first (batch) dimension.
        """
        body: dict = {}
        if signature:
            body["signature_name"] = signature
        fast = _fast_encode(inputs, signature, columnar)
        if fast is not None:
            return fast
        if isinstance(inputs, dict):
            columns = {k: input_to_json(v) for k, v in inputs.items()}
            if columnar:
                body["inputs"] = columns
            else:
                rows = {len(v) if isinstance(v, list) else -1 for v in columns.values()}
                if len(rows) != 1 or -1 in rows:
                    raise ValueError("inputs must all have the same first (batch) dimension")
                n = rows.pop()
                body["instances"] = [{k: col[i] for k, col in columns.items()} for i in range(n)]
        else:
            body["inputs" if columnar else "instances"] = input_to_json(inputs)
        return json.dumps(body).encode("utf-8")

    def predict(self, inputs, *, signature: str | None = None, version: int | None = None,
                label: str | None = None, columnar: bool = False) -> dict[str, np.ndarray]:
        """Runs a signature (default ``serving_default``) on `inputs`.

        Returns the outputs by name as numpy arrays (floats as `float_dtype`),
        whichever of the row (``instances``) or columnar (``inputs``) formats is used.
        """
        body = self.encode_predict(inputs, signature=signature, columnar=columnar)
        return self.predict_encoded(body, signature=signature, version=version, label=label)

    def predict_encoded(self, body: bytes, *, signature: str | None = None,
                        version: int | None = None, label: str | None = None
                        ) -> dict[str, np.ndarray]:
        """`predict` for a body already made by `encode_predict` (load tests send one body often)."""
        doc = self._request_json("POST", self._model_path(version, label) + ":predict", body)
        if "predictions" in doc:
            return self._decode_rows(doc["predictions"], signature, version, label)
        if "outputs" in doc:
            return self._decode_columns(doc["outputs"], signature, version, label)
        raise ServingError("INTERNAL", f"answer has neither 'predictions' nor 'outputs': "
                                       f"{str(doc)[:200]}")

    def close(self) -> None:
        """Closes this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- answers

    @staticmethod
    def _is_named(value) -> bool:
        return isinstance(value, dict) and not (len(value) == 1 and "b64" in value)

    def _decode_rows(self, predictions, signature, version, label) -> dict[str, np.ndarray]:
        if predictions and self._is_named(predictions[0]):
            names = list(predictions[0])
            return {n: json_to_output([p[n] for p in predictions], self.float_dtype) for n in names}
        return {self._single_output_name(signature, version, label):
                json_to_output(predictions, self.float_dtype)}

    def _decode_columns(self, outputs, signature, version, label) -> dict[str, np.ndarray]:
        if self._is_named(outputs):
            return {n: json_to_output(v, self.float_dtype) for n, v in outputs.items()}
        return {self._single_output_name(signature, version, label):
                json_to_output(outputs, self.float_dtype)}

    def _single_output_name(self, signature, version, label) -> str:
        # TF Serving drops the name of a lone output; the metadata has it.
        key = (signature or "serving_default", version, label)
        if key not in self._output_names:
            sigs = self.metadata(version, label)["signatures"]
            self._output_names[key] = list(sigs.get(key[0], {}).get("outputs", {}))
        names = self._output_names[key]
        return names[0] if len(names) == 1 else "output_0"

    # -- HTTP

    def _model_path(self, version, label) -> str:
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        path = f"{self._prefix}/v1/models/{quote(self.model, safe='')}"
        if version is not None:
            path += f"/versions/{int(version)}"
        elif label is not None:
            path += f"/labels/{quote(str(label), safe='')}"
        return path

    def _get_json(self, path: str) -> dict:
        return self._request_json("GET", path, None)

    def _request_json(self, method: str, path: str, body: bytes | None) -> dict:
        status, data = self._request(method, path, body)
        if status != 200:
            raise ServingError(code_for_http_status(status), _error_message(data), status)
        try:
            return json.loads(data)
        except ValueError:
            raise ServingError("INTERNAL", f"answer from {self.url}{path} is not JSON: "
                                           f"{data[:200]!r}") from None

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, and whether it was used before (kept alive)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout)
        try:
            conn.connect()
            # Megabyte bodies go out in one buffer instead of many small wake-ups of the server.
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 2**20)
        except OSError:
            conn.close()  # request() reconnects and reports the error its usual way
        self._local.conn = conn
        return conn, False

    def _request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        attempt = 0
        while True:
            conn, reused = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                if response.will_close:
                    self.close()
            except TimeoutError:
                self.close()
                raise ServingError("DEADLINE_EXCEEDED",
                                   f"no answer from {self.url}{path} within {self.timeout:g} s") from None
            except (OSError, http.client.HTTPException) as err:
                self.close()
                if reused and isinstance(err, (ConnectionError, http.client.RemoteDisconnected)):
                    # The server dropped an idle kept-alive connection: not a failed attempt.
                    continue
                # Refused (server starting or gone): retry with back-off.
                if attempt < self.retries:
                    time.sleep(self.backoff_s * 2**attempt)
                    attempt += 1
                    continue
                raise ServingError("UNAVAILABLE", f"cannot reach {self.url}{path}: {err}", 503) from None
            if response.status == 503 and attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
                attempt += 1
                continue
            return response.status, data


def _fast_encode(inputs, signature: str | None, columnar: bool) -> bytes | None:
    """The request body written straight from the array, None to use json.

    Large float32 arrays go to json_numbers' writer, others to orjson.
    Building nested Python lists and dumping them with json costs ~16 ms per 64x64 image
    on this project's 2-core benchmark machine; orjson writes the float32 array itself
    (its shortest exact decimal) in ~0.15 ms. Only for one finite numeric array: orjson
    writes NaN as null, and TF Serving's JSON wants the NaN / Infinity tokens the json
    module writes.
    """
    if isinstance(inputs, dict):
        return None
    arr = np.asarray(inputs)
    if arr.dtype == np.float32 and arr.size >= _COMPILED_WRITER_NUMBERS:
        # Imported here: numba takes ~0.2 s to import, which small requests never need.
        from deeplense_tf.serving import json_numbers

        value = json_numbers.write_float32_list(arr)
        if value is not None:
            return _body_head(signature, columnar) + value + b"}"
    if _orjson is None:
        return None
    if arr.dtype not in _ORJSON_DTYPES or (arr.dtype.kind == "f" and not np.isfinite(arr).all()):
        return None
    head = _body_head(signature, columnar)
    if arr.ndim >= 2 and arr.shape[-1] == 1 and arr.size:
        # orjson spends most of its time on the innermost one-number lists of an
        # [N, H, W, 1] image; write [N, H, W] and wrap every number in brackets instead:
        # "," -> "],[" wraps all but the first and last numbers of the text, the outer
        # pair those two (numbers hold no brackets or commas).
        text = _orjson.dumps(np.ascontiguousarray(arr[..., 0]), option=_orjson.OPT_SERIALIZE_NUMPY)
        value = b"[" + text.replace(b",", b"],[") + b"]"
    else:
        value = _orjson.dumps(np.ascontiguousarray(arr), option=_orjson.OPT_SERIALIZE_NUMPY)
    return head + value + b"}"


def _body_head(signature: str | None, columnar: bool) -> bytes:
    key = b'"inputs":' if columnar else b'"instances":'
    if signature:
        return b'{"signature_name":' + json.dumps(signature).encode() + b"," + key
    return b"{" + key


def _error_message(data: bytes) -> str:
    try:
        doc = json.loads(data)
        if isinstance(doc, dict) and "error" in doc:
            return str(doc["error"])
    except ValueError:
        pass
    return data.decode("utf-8", errors="replace").strip() or "(empty answer)"
