"""TF Serving's JSON answers: numpy outputs -> JSON text (server), answer JSON -> numpy (clients).

The server writes predict answers as TF Serving's ``json_tensor.cc`` does
(MakeJsonFromTensors): ``{"predictions": [...]}`` per instance or ``{"outputs": ...}``,
a single output's name dropped, floats in its exact number format (`decimal_string`),
string tensors named ``*_bytes`` as ``{"b64": ...}``, and a dtype it cannot write is a 400.
The clients turn such answers back into arrays. No TensorFlow import.
"""

from __future__ import annotations

import base64
import json

import numpy as np

from deeplense_tf.serving.json_tensors import COLUMNAR, dense_shape, is_b64_object
from deeplense_tf.serving.status import invalid_argument

# ---------------------------------------------------------------------------
# Answers: numpy -> JSON


def to_json_value(arr: np.ndarray, name: str = ""):
    """A numpy array as nested Python lists ready for `json.dumps`.

    float32 values are written with their shortest exact decimal (0.2, not
    0.20000000298023224), NaN / Infinity pass through, and string tensors whose
    name ends in ``_bytes`` are written as ``{"b64": ...}`` (TF Serving's rule).
    """
    arr = np.asarray(arr)
    if arr.dtype.kind == "f" and arr.dtype != np.float64:
        # str(np.float32) is the shortest decimal that reads back to the same float32.
        shortest = np.fromiter((float(str(v)) for v in arr.ravel()), dtype=np.float64,
                               count=arr.size)
        return shortest.reshape(arr.shape).tolist()
    if arr.dtype.kind in "OSU":
        as_b64 = name.endswith("_bytes")

        def convert(v):
            if isinstance(v, str):
                v = v.encode("utf-8")
            if as_b64:
                return {"b64": base64.b64encode(v).decode("ascii")}
            return v.decode("utf-8", errors="replace")

        flat = [convert(v) for v in arr.ravel()]
        return np.array(flat, dtype=object).reshape(arr.shape).tolist() if arr.ndim else flat[0]
    return arr.tolist()


def decimal_string(value: float, double: bool = False) -> str:
    """One float as TF Serving's JSON writer prints it (json_tensor.cc, WriteDecimal).

    Six significant digits (printf %g: 9e+06, 3e-05), or 9 (17 for a double) when six do
    not read back to the same value; ".0" added to whole numbers; NaN, Infinity, -Infinity.
    """
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    text = format(value, "g")
    back = float(text)
    if (back if double else float(np.float32(back))) != value:
        text = format(value, ".17g" if double else ".9g")
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _tokens(arr: np.ndarray, name: str) -> list[str]:
    """The JSON token of every element of `arr` (flattened, C order)."""
    kind = arr.dtype.kind
    if kind == "f":
        double = arr.dtype == np.float64
        return [decimal_string(v, double) for v in arr.ravel().tolist()]
    if kind in "iu":
        return [str(v) for v in arr.ravel().tolist()]
    if kind == "b":
        return ["true" if v else "false" for v in arr.ravel().tolist()]
    if kind in "OSU":
        as_b64 = name.endswith("_bytes")
        out = []
        for v in arr.ravel().tolist():
            if isinstance(v, str):
                v = v.encode("utf-8")
            if not isinstance(v, bytes):
                raise invalid_argument("Failed to write JSON value for tensor type: string")
            if as_b64:
                out.append('{"b64": "' + base64.b64encode(v).decode("ascii") + '"}')
            else:
                out.append(json.dumps(v.decode("utf-8", errors="replace")))
        return out
    raise invalid_argument(f"Failed to write JSON value for tensor type: {arr.dtype.name}")


def tensor_json(arr, name: str = "") -> str:
    """A whole tensor as JSON text in TF Serving's number format (see `decimal_string`)."""
    arr = np.asarray(arr)
    if arr.ndim == 0:
        return _tokens(arr, name)[0]
    return "[" + ", ".join(_rows_json(arr, name)) + "]"


def _rows_json(arr: np.ndarray, name: str) -> list[str]:
    """One JSON text per row (first-axis entry) of `arr`."""
    if arr.size == 0:
        return [_empty_json(arr.shape[1:])] * arr.shape[0]
    tokens = _tokens(arr, name)
    for dim in reversed(arr.shape[1:]):
        tokens = ["[" + ", ".join(tokens[i:i + dim]) + "]" for i in range(0, len(tokens), dim)]
    return tokens


def _empty_json(shape: tuple[int, ...]) -> str:
    """A zero-element tensor of `shape` as nested JSON lists."""
    if not shape:
        return ""
    inner = _empty_json(shape[1:]) if shape[0] else ""
    return "[" + ", ".join([inner] * shape[0]) + "]"


def encode_predict_response(outputs: dict[str, np.ndarray], fmt: str) -> bytes:
    """The JSON answer to a predict request in `fmt` (`ROW` or `COLUMNAR`).

    Row format: ``{"predictions": [...]}``, one entry per instance, an object per
    instance when there are several outputs. Columnar: ``{"outputs": ...}``. A
    single output's name is dropped, as TF Serving does. Numbers are written as TF
    Serving writes them (`decimal_string`); a dtype it cannot write is a 400.
    """
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    arrays = {n: np.asarray(outputs[n]) for n in names}
    if fmt == COLUMNAR:
        if len(names) == 1:
            return ('{"outputs": ' + tensor_json(arrays[names[0]], names[0]) + "}").encode()
        parts = [json.dumps(n) + ": " + tensor_json(arrays[n], n) for n in names]
        return ('{"outputs": {' + ", ".join(parts) + "}}").encode()

    batch = None
    for n in names:
        arr = arrays[n]
        if arr.ndim == 0:
            raise invalid_argument(f"Tensor name: {n} has no shape information ")
        if batch is not None and arr.shape[0] != batch:
            raise invalid_argument(
                f"Tensor name: {n} has inconsistent batch size: {arr.shape[0]} expecting: {batch}")
        batch = arr.shape[0]
    rows = {n: _rows_json(arrays[n], n) for n in names}
    if len(names) == 1:
        predictions = rows[names[0]]
    else:
        keys = [json.dumps(n) + ": " for n in names]
        predictions = ["{" + ", ".join(k + rows[n][i] for k, n in zip(keys, names)) + "}"
                       for i in range(batch)]
    return ('{"predictions": [' + ", ".join(predictions) + "]}").encode()


# ---------------------------------------------------------------------------
# Client side: numpy -> request JSON, answer JSON -> numpy


def input_to_json(arr) -> object:
    """An input array as the JSON value a request carries (bytes as ``{"b64": ...}``)."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "OSU":
        def convert(v):
            if isinstance(v, bytes):
                return {"b64": base64.b64encode(v).decode("ascii")}
            return str(v)

        flat = [convert(v) for v in arr.ravel()]
        return np.array(flat, dtype=object).reshape(arr.shape).tolist() if arr.ndim else flat[0]
    # float32 -> Python float is exact; the extra digits are harmless for round trips.
    return arr.tolist()


def json_to_output(value, float_dtype=np.float32) -> np.ndarray:
    """An answer's JSON value as an array: floats as `float_dtype`, b64 objects as bytes."""
    if _contains_b64(value):
        return _b64_tree(value)
    arr = np.asarray(value)
    if arr.dtype.kind == "f" and float_dtype is not None:
        return arr.astype(float_dtype)
    return arr


def _contains_b64(value) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return is_b64_object(value)


def _b64_tree(value) -> np.ndarray:
    flat: list = []

    def walk(v):
        if isinstance(v, list):
            for item in v:
                walk(item)
        else:
            flat.append(base64.b64decode(v["b64"]) if is_b64_object(v) else v)

    walk(value)
    arr = np.empty(len(flat), dtype=object)
    arr[:] = flat
    return arr.reshape(dense_shape(value))
