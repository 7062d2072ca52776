"""TF Serving's JSON tensor encoding of requests: bodies to numpy arrays (answers: json_answers).

Follows TF Serving's ``json_tensor.cc`` (the REST API's reference
implementation): row format ``{"instances": [...]}`` and columnar format
``{"inputs": ...}``, ``{"b64": "..."}`` for binary strings, ``NaN`` and
``Infinity`` accepted in requests and written in answers, a single output's
name dropped from the answer, and the same error messages (so a client cannot
tell the local server from TF Serving by its 400s).

Pure functions on bytes, Python values and numpy arrays; no TensorFlow import,
so the REST client can use them too.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from dataclasses import dataclass

import numpy as np

from deeplense_tf.serving.status import ServingError, invalid_argument

ROW = "row"
COLUMNAR = "columnar"

# TF DataType enum name -> numpy dtype (strings travel as Python bytes in object arrays).
NUMPY_DTYPES: dict[str, np.dtype] = {
    "DT_FLOAT": np.dtype(np.float32),
    "DT_DOUBLE": np.dtype(np.float64),
    "DT_HALF": np.dtype(np.float16),
    "DT_INT8": np.dtype(np.int8),
    "DT_INT16": np.dtype(np.int16),
    "DT_INT32": np.dtype(np.int32),
    "DT_INT64": np.dtype(np.int64),
    "DT_UINT8": np.dtype(np.uint8),
    "DT_UINT16": np.dtype(np.uint16),
    "DT_UINT32": np.dtype(np.uint32),
    "DT_UINT64": np.dtype(np.uint64),
    "DT_BOOL": np.dtype(np.bool_),
    "DT_STRING": np.dtype(object),
}
# The short names TF's DataTypeString() prints in error messages.
_TYPE_WORDS = {
    "DT_FLOAT": "float", "DT_DOUBLE": "double", "DT_HALF": "half", "DT_INT8": "int8",
    "DT_INT16": "int16", "DT_INT32": "int32", "DT_INT64": "int64", "DT_UINT8": "uint8",
    "DT_UINT16": "uint16", "DT_UINT32": "uint32", "DT_UINT64": "uint64", "DT_BOOL": "bool",
    "DT_STRING": "string",
}
# Integers outside the dtype's range are refused rather than wrapped around.
_INT_RANGES = {
    name: (int(np.iinfo(dt).min), int(np.iinfo(dt).max))
    for name, dt in NUMPY_DTYPES.items() if dt.kind in "iu"
}
# Float inputs take any JSON number, rounded to the dtype (beyond its range: +-inf), as
# TF Serving's rapidjson GetFloat() / GetDouble() do.
_FLOAT_TYPES = ("DT_FLOAT", "DT_DOUBLE", "DT_HALF")
_MAX_VALUE_CHARS = 200  # error messages quote the offending JSON value, cut to this
# Deepest nesting read as a tensor. numpy stops at 64 dimensions and Python's recursion
# near 1,000, both as exceptions a client would see as a 500; past this it is a 400.
MAX_JSON_RANK = 32


@dataclass(frozen=True)
class TensorInfo:
    """One named input or output of a signature.

    `shape` has None for a free dimension (-1 in the SignatureDef); `shape` itself
    is None when the rank is unknown.
    """

    dtype: str  # TF DataType enum name, e.g. "DT_FLOAT"
    shape: tuple[int | None, ...] | None

    @property
    def numpy_dtype(self) -> np.dtype:
        return NUMPY_DTYPES.get(self.dtype, np.dtype(object))


@dataclass
class PredictRequestJson:
    """A parsed predict body: the JSON object, its signature name ("" = default).

    `numeric` holds ``(key, array)`` when the body was the common
    ``{"instances" | "inputs": <regular nested list of numbers>}`` and was read by
    the fast path; `doc` is then parsed only if something needs it.
    """

    body: bytes
    signature_name: str
    # Python's json module turns `true` into 1-compatible bools that numpy would
    # silently accept as numbers; when the body has boolean tokens we convert
    # value by value, like TF Serving, to reject them.
    strict: bool
    numeric: tuple[str, np.ndarray] | None = None
    _doc: dict | None = None

    @property
    def doc(self) -> dict:
        if self._doc is None:
            self._doc = load_json_object(self.body)
        return self._doc


def shape_string(shape) -> str:
    """`[-1,64,64,1]` (TF Serving's ShapeToString), -1 for a free dimension."""
    if shape is None:
        return "[?]"
    return "[" + ",".join("-1" if d is None else str(int(d)) for d in shape) + "]"


def value_string(value) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = _shallow_repr(value)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[:_MAX_VALUE_CHARS] + "...(truncated)"
    return text


def _shallow_repr(value) -> str:
    """The start of a value too deep for json.dumps (repr would recurse just as far)."""
    opening = ""
    while isinstance(value, list) and value and len(opening) < _MAX_VALUE_CHARS:
        opening += "["
        value = value[0]
    return opening + ("..." if isinstance(value, (list, dict)) else repr(value))


def json_type(value) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def is_b64_object(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_named_object(value) -> bool:
    return isinstance(value, dict) and not is_b64_object(value)


# ---------------------------------------------------------------------------
# Requests: JSON -> numpy


def signature_name(doc: dict) -> str:
    """The request's `signature_name` ("" when absent); TF Serving's message when not a string."""
    signature = doc.get("signature_name", "")
    if not isinstance(signature, str):
        raise invalid_argument(
            f"JSON Value: {value_string(doc)} not formatted correctly. "
            "'signature_name' key must be a string value.")
    return signature


def parse_predict_body(body: bytes) -> PredictRequestJson:
    """Parses a ``:predict`` body (bytes) into a `PredictRequestJson`.

    Raises `ServingError` (INVALID_ARGUMENT) with TF Serving's messages for an
    empty body, malformed JSON, a non-object document or a non-string signature_name.
    """
    fast = _fast_numeric(body)
    if fast is not None:
        signature, key, array = fast
        return PredictRequestJson(body=body, signature_name=signature, strict=False,
                                  numeric=(key, array))
    doc = load_json_object(body)
    signature = signature_name(doc)
    strict = b"true" in body or b"false" in body
    return PredictRequestJson(body=body, signature_name=signature, strict=strict, _doc=doc)


# Python's json messages -> rapidjson's GetParseError_En() texts, which TF Serving sends.
_PARSE_ERRORS = {
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Extra data": "The document root must not be followed by other values.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid control character at": "Invalid encoding in string.",
    "Invalid \\escape": "Invalid escape character in string.",
    "Invalid \\uXXXX escape": "Incorrect hex digit after \\u escape in string.",
}


def _parse_error_text(err: json.JSONDecodeError) -> str:
    if err.msg == "Expecting ',' delimiter":
        # rapidjson names the container; the innermost one open at the error tells which.
        inside = _innermost_open(err.doc, err.pos)
        return ("Missing a comma or '}' after an object member." if inside == "{"
                else "Missing a comma or ']' after an array element.")
    return _PARSE_ERRORS.get(err.msg, err.msg)


def _innermost_open(text: str, pos: int) -> str:
    stack, in_string, escaped = [], False, False
    for char in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            stack.append(char)
        elif char in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def load_json_object(body: bytes) -> dict:
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        # json accepts NaN / Infinity / -Infinity, as TF Serving's kParseNanAndInfFlag does.
        doc = json.loads(body)
    except json.JSONDecodeError as err:
        raise invalid_argument(
            f"JSON Parse error: {_parse_error_text(err)} at offset: {err.pos}") from None
    except UnicodeDecodeError as err:
        raise invalid_argument(
            f"JSON Parse error: Invalid encoding in string. at offset: {err.start}") from None
    except (ValueError, RecursionError) as err:
        # RecursionError: nesting deeper than Python's stack; ValueError: other decode errors.
        raise invalid_argument(f"JSON Parse error: {type(err).__name__}: {err}") from None
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {value_string(doc)} Is not object")
    return doc


# -- fast path for the usual body: one regular nested list of numbers.
# json.loads builds a Python float and list per pixel and numpy then walks those lists
# again; for a 64x64 image that is most of a REST request's cost. Here the list's
# structure is checked with bytes operations (brackets and commas against those of a
# regular list of the shape it implies) and the numbers are read in one call: by
# simdjson (the `serving` extra; it also rejects anything that is not valid JSON), else
# by numpy's text reader. simdjson reads no NaN / Infinity, numpy does; either way a
# body it cannot read exactly goes to the JSON path, which gives TF Serving's messages.
# Before all that, json_numbers' compiled reader does the check and the reading in one
# pass (half the CPU time of the simdjson path, without the GIL); what it does not take
# (NaN, Infinity, empty or ragged lists, invalid JSON) goes on to the paths above.
_FAST_HEAD = re.compile(
    rb'\s*\{\s*(?:"signature_name"\s*:\s*"(?P<sig>[A-Za-z0-9_./-]*)"\s*,\s*)?'
    rb'"(?P<key>instances|inputs)"\s*:\s*(?=\[)')
_FAST_TAIL = re.compile(
    rb'\]\s*(?:,\s*"signature_name"\s*:\s*"(?P<sig>[A-Za-z0-9_./-]*)"\s*)?\}\s*\Z')
_FAST_BODY = re.compile(  # the whole body, for the numpy reader (which validates nothing)
    rb'\s*\{\s*(?:"signature_name"\s*:\s*"(?P<sig1>[A-Za-z0-9_./-]*)"\s*,\s*)?'
    rb'"(?P<key>instances|inputs)"\s*:\s*(?P<value>\[[-0-9eE.+,\s\[\]NaInfity]*\])\s*'
    rb'(?:,\s*"signature_name"\s*:\s*"(?P<sig2>[A-Za-z0-9_./-]*)"\s*)?\}\s*')
_WHITESPACE = b" \t\r\n"
_MAX_FAST_RANK = 16
_NUMBER_CHARS = b"0123456789eE.+-NaInfity"
_SEPARATORS_TO_SPACE = bytes.maketrans(b"[],", b"   ")

try:  # the `serving` extra
    import simdjson as _simdjson
except ImportError:  # pragma: no cover - installed with the serving extra
    _simdjson = None
_parsers = threading.local()


def _read_numbers(text: bytes) -> np.ndarray:
    """Whitespace-separated numbers (NaN, Infinity too) as float64.

    np.fromstring stops quietly at a token it cannot read and reads "" as [-1.0];
    callers compare the count with the slots of the checked list structure, which
    has no empty list, so both come out as a count mismatch.
    """
    return np.fromstring(text, dtype=np.float64, sep=" ")


def _structure_of(shape: tuple[int, ...]) -> bytes:
    """The brackets and commas of a regular nested list of `shape` (numbers removed)."""
    text = b""
    for dim in reversed(shape):
        text = b"[" + b",".join([text] * dim) + b"]"
    return text


def _regular_shape(structure: bytes) -> tuple[int, ...] | None:
    """The shape of a nested list from its brackets and commas, None unless it is regular."""
    depth = len(structure) - len(structure.lstrip(b"["))
    if not 0 < depth <= _MAX_FAST_RANK:  # the level scan below is quadratic in depth
        return None
    dims = []
    for level in range(1, depth + 1):
        # In a regular list the first run of `level` closing brackets ends the first
        # list `level` levels up; count its children.
        end = structure.find(b"]" * level)
        if end < 0:
            return None
        if level == 1:
            dims.append(structure.count(b",", depth, end) + 1)
        else:
            dims.append(structure.count(b"]" * (level - 1), 0, end + level - 1))
    shape = tuple(reversed(dims))
    return shape if _structure_of(shape) == structure else None


def _fast_numeric(body: bytes) -> tuple[str, str, np.ndarray] | None:
    """(signature, key, float64 array) for a plain numeric body, None to take the JSON path."""
    head = _FAST_HEAD.match(body)
    if head is None:
        return None
    # Imported here: numba takes ~0.2 s to import, which clients of this module never need.
    from deeplense_tf.serving import json_numbers

    read = json_numbers.read_numeric_list(body, head.end())
    if read is not None:
        end, numbers = read
        tail = _FAST_TAIL.match(body, end - 1)  # from the list's closing bracket
        if tail is not None and not (head["sig"] is not None and tail["sig"] is not None):
            signature = (head["sig"] or tail["sig"] or b"").decode()
            return signature, head["key"].decode(), numbers
    if _simdjson is None:
        return _fast_numeric_numpy(body)
    tail_from = max(head.end(), len(body) - 256)
    tail = _FAST_TAIL.search(body, tail_from)
    if tail is None or (head["sig"] is not None and tail["sig"] is not None):
        return None
    value = body[head.end():tail.start() + 1]
    shape = _regular_shape(value.translate(None, _WHITESPACE + _NUMBER_CHARS))
    if shape is None:
        return None
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = _simdjson.Parser()
    try:
        parsed = parser.parse(value)
        numbers = np.frombuffer(parsed.as_buffer(of_type="d"), dtype=np.float64)
    except (ValueError, TypeError, RuntimeError):  # not JSON, NaN / Infinity, not numbers
        return _fast_numeric_numpy(body)
    finally:
        parsed = None  # the parser may be reused only once nothing refers to its last document
    if numbers.size != int(np.prod(shape)):  # an empty list somewhere
        return None
    signature = (head["sig"] or tail["sig"] or b"").decode()
    return signature, head["key"].decode(), numbers.reshape(shape)


def _fast_numeric_numpy(body: bytes) -> tuple[str, str, np.ndarray] | None:
    match = _FAST_BODY.fullmatch(body)
    if match is None or (match["sig1"] is not None and match["sig2"] is not None):
        return None
    compact = match["value"].translate(None, _WHITESPACE)
    if b"[]" in compact:  # empty lists: TF Serving's own messages explain those
        return None
    shape = _regular_shape(compact.translate(None, _NUMBER_CHARS))
    if shape is None:
        return None
    try:
        # From the text with its whitespace: "[2 3]" must read as two tokens, not 23.
        numbers = _read_numbers(match["value"].translate(_SEPARATORS_TO_SPACE))
    except ValueError:
        return None
    if numbers.size != int(np.prod(shape)):  # an unreadable token, or an empty slot "[1,,2]"
        return None
    signature = (match["sig1"] or match["sig2"] or b"").decode()
    return signature, match["key"].decode(), numbers.reshape(shape)


def request_inputs(
    request: PredictRequestJson, inputs: dict[str, TensorInfo]
) -> tuple[dict[str, np.ndarray], str]:
    """The input arrays a predict body holds, and its format (`ROW` or `COLUMNAR`).

    `inputs` maps the signature's input names to their `TensorInfo`. Shapes are
    not checked against the signature here (the server does that for REST and
    gRPC alike); values are checked against the dtypes.
    """
    if not inputs:
        raise invalid_argument("Failed to get input map for signature: "
                               f"{request.signature_name or 'DEFAULT'}")
    if request.numeric is not None and len(inputs) == 1:
        key, array = request.numeric
        name, info = next(iter(inputs.items()))
        # Only float inputs: the fast path reads 2 and 2.0 alike, an int input must not.
        if info.dtype in _FLOAT_TYPES:
            converted = _fast_array(array, info.dtype)
            if converted is not None:
                return {name: converted}, (ROW if key == "instances" else COLUMNAR)
    doc = request.doc
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid_argument(
            f"JSON Value: {value_string(doc)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist ")
    if has_instances:
        return _row_inputs(doc, inputs, request.strict), ROW
    if has_inputs:
        return _columnar_inputs(doc["inputs"], inputs, request.strict), COLUMNAR
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _row_inputs(doc, inputs: dict[str, TensorInfo], strict: bool) -> dict[str, np.ndarray]:
    instances = doc["instances"]
    if not isinstance(instances, list):
        raise invalid_argument(
            f"JSON Value: {value_string(doc)} Expecting 'instances' to be an list/array")
    if not instances:
        raise invalid_argument(f"JSON Value: {value_string(doc)} No values in 'instances' array")
    if not isinstance(instances[0], dict) and len(inputs) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map")

    if not _is_named_object(instances[0]):
        name, info = next(iter(inputs.items()))
        if not strict:
            whole = _fast_array(instances, info.dtype)
            if whole is not None:
                return {name: whole}
        rows = []
        for i, item in enumerate(instances):
            if _is_named_object(item):
                raise invalid_argument(
                    f"Expecting value/list but got object at item {i} of input list")
            try:
                rows.append(json_to_array(item, info.dtype, strict))
                _check_same_shape(rows[0], rows[-1])
            except ServingError as err:
                raise invalid_argument(
                    f"Failed to process element: {i} of 'instances' list. "
                    f"Error: {_status_string(err)}") from None
        return {name: np.stack(rows)}

    per_name: dict[str, list[np.ndarray]] = {}
    expected = set(inputs)
    for i, item in enumerate(instances):
        if not _is_named_object(item):
            raise invalid_argument(f"Expecting object but got list at item {i} of input list")
        for key, value in item.items():
            try:
                if key not in inputs:
                    raise invalid_argument(f"JSON object: does not have named input: {key}")
                arr = json_to_array(value, inputs[key].dtype, strict)
                seen = per_name.setdefault(key, [])
                seen.append(arr)
                _check_same_shape(seen[0], arr)
            except ServingError as err:
                raise invalid_argument(
                    f"Failed to process element: {i} key: {key} of 'instances' list. "
                    f"Error: {_status_string(err)}") from None
        if set(item) != expected:
            raise invalid_argument(
                f"Failed to process element: {i} of 'instances' list. JSON object: "
                f"{value_string(item)} keys must be equal to: {','.join(sorted(expected))}")
    return {key: np.stack(arrays) for key, arrays in per_name.items()}


def _check_same_shape(first: np.ndarray, arr: np.ndarray) -> None:
    if first.size != arr.size:
        raise invalid_argument(f"Expecting tensor size: {first.size} but got: {arr.size}")
    if first.shape != arr.shape:
        raise invalid_argument(
            f"Expecting shape {shape_string(first.shape)} but got: {shape_string(arr.shape)}")


def _columnar_inputs(value, inputs: dict[str, TensorInfo], strict: bool) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or is_b64_object(value):
        if len(inputs) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map")
        name, info = next(iter(inputs.items()))
        return {name: json_to_array(value, info.dtype, strict)}
    out = {}
    for name, info in inputs.items():
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        out[name] = json_to_array(value[name], info.dtype, strict)
    return out


def _status_string(err: Exception) -> str:
    code = getattr(err, "code", "INVALID_ARGUMENT")
    return f"{code}: {getattr(err, 'message', str(err))}"


def json_to_array(value, dtype: str, strict: bool = True) -> np.ndarray:
    """A JSON value (nested lists of numbers, strings, b64 objects) as an array of `dtype`.

    `dtype` is a TF DataType name (``"DT_FLOAT"`` ...). Raises `ServingError`
    (INVALID_ARGUMENT) with TF Serving's message for a ragged list, a value of
    the wrong JSON type, or a number the dtype cannot hold exactly.
    """
    if not strict:
        arr = _fast_array(value, dtype)
        if arr is not None:
            return arr
    shape = dense_shape(value)
    flat: list = []
    _fill(value, 0, shape, dtype, flat)
    np_dtype = NUMPY_DTYPES.get(dtype)
    if np_dtype is None:
        raise invalid_argument(f"Conversion of JSON values to type {dtype} is not supported")
    if np_dtype == np.dtype(object):
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        return arr.reshape(shape)
    with np.errstate(over="ignore"):
        return np.asarray(flat, dtype=np_dtype).reshape(shape)


def _fast_array(value, dtype: str) -> np.ndarray | None:
    """numpy's own conversion where it gives what TF Serving would; None to go value by value."""
    target = NUMPY_DTYPES.get(dtype)
    if target is None or target.kind not in "fiu":
        return None
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError):  # ragged or odd values: explain one by one
        return None
    if arr.ndim > MAX_JSON_RANK:
        return None  # dense_shape gives the message
    if target.kind == "f":
        if arr.dtype.kind not in "fiu":
            return None
        with np.errstate(over="ignore"):  # beyond float32's range is +-inf, as in TF Serving
            return arr.astype(target, copy=False)
    else:
        if arr.dtype.kind not in "iu":
            return None
        low, high = _INT_RANGES[dtype]
        if arr.size and (arr.min() < low or arr.max() > high):
            return None
    return arr.astype(target, copy=False)


def dense_shape(value) -> list[int]:
    """The shape implied by the first element at each level (TF Serving's GetDenseTensorShape)."""
    shape = []
    while isinstance(value, list):
        if len(shape) == MAX_JSON_RANK:
            raise invalid_argument(
                f"JSON value nested more than {MAX_JSON_RANK} levels deep: tensors of at most "
                f"{MAX_JSON_RANK} dimensions are accepted")
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, level: int, shape: list[int], dtype: str, out: list) -> None:
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(
                f"JSON Value: {value_string(value)} found at incorrect level: {level + 1} "
                f"in the JSON DOM. Expected at level: {rank}")
        if isinstance(value, dict):
            if dtype != "DT_STRING":
                raise _type_error(value, dtype)
            out.append(decode_b64_object(value))
        else:
            out.append(_scalar(value, dtype))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _type_error(value, dtype: str):
    return invalid_argument(
        f"JSON Value: {value_string(value)} Type: {json_type(value)} is not of expected type: "
        f"{_TYPE_WORDS.get(dtype, dtype)}")


def _scalar(value, dtype: str):
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if dtype in _FLOAT_TYPES:
        if not is_number:
            raise _type_error(value, dtype)
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float: rounds to infinity
            return float("inf") if value > 0 else float("-inf")
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
            raise _type_error(value, dtype)
        return value
    if dtype == "DT_BOOL":
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if dtype == "DT_STRING":
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8")
    raise ServingError(
        "UNIMPLEMENTED", f"Conversion of JSON Value: {value_string(value)} to type: {dtype}")


def decode_b64_object(value) -> bytes:
    if not is_b64_object(value):
        raise invalid_argument(
            f"JSON Value: {value_string(value)} not formatted correctly for base64 data")
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None
