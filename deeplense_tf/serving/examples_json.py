"""``:classify`` and ``:regress`` bodies: JSON examples to serialized tf.Examples, results to JSON.

Follows TF Serving's ``json_tensor.cc`` (FillClassificationRequestFromJson,
MakeJsonFromClassificationResult ...) and its messages:

- request: ``{"signature_name": ..., "context": {features}, "examples": [{features}, ...]}``;
  a feature value is a JSON value or a list of them: strings (and ``{"b64": ...}``) become a
  bytes_list, integers and booleans an int64_list, other numbers (NaN, Infinity too) a
  float_list; a feature's values must all be of one kind. ``context`` features are merged
  into every example (the example's own win), as TF Serving's ExampleListWithContext.
- classify answer: ``{"results": [[["label", score], ...], ...]}``, one list per example;
- regress answer: ``{"results": [value, ...]}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from deeplense_tf.serving.json_answers import decimal_string
from deeplense_tf.serving.json_tensors import (
    decode_b64_object,
    is_b64_object,
    json_type,
    load_json_object,
    signature_name,
    value_string,
)
from deeplense_tf.serving.status import invalid_argument

_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


@dataclass
class ExamplesRequest:
    """A parsed classify / regress body: the signature name ("" = default) and the examples."""

    signature_name: str
    examples: list[bytes]  # serialized tf.Example protos, context merged in


def parse_examples_body(body: bytes) -> ExamplesRequest:
    """Reads a ``:classify`` / ``:regress`` body; `ServingError` with TF Serving's messages."""
    from tensorflow.core.example import example_pb2

    doc = load_json_object(body)
    signature = signature_name(doc)
    context = b""
    if "context" in doc:
        context = _example(doc["context"], example_pb2).SerializeToString()
    if "examples" not in doc:
        # TF Serving says "classify" for both methods.
        raise invalid_argument(f"JSON Value: {value_string(doc)} When method is classify, key "
                               "'examples' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid_argument(
            f"JSON Value: {value_string(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid_argument(f"JSON Value: {value_string(doc)} 'examples' value is an empty array")
    # Serialized protos concatenated merge: the example's features override the context's.
    serialized = [context + _example(e, example_pb2).SerializeToString() for e in examples]
    return ExamplesRequest(signature_name=signature, examples=serialized)


def _example(value, example_pb2):
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {json_type(value)}")
    example = example_pb2.Example()
    for name, content in value.items():
        feature = example.features.feature[name]
        for item in content if isinstance(content, list) else [content]:
            _add_value(item, name, feature)
    return example


def _add_value(value, name: str, feature) -> None:
    kind = feature.WhichOneof("kind")
    if value is None or isinstance(value, list) or (isinstance(value, dict)
                                                    and not is_b64_object(value)):
        raise invalid_argument(
            f"Feature: {name} has element with unexpected JSON type: {json_type(value)}")
    if isinstance(value, bool):
        _expect(kind, "int64_list", name)
        feature.int64_list.value.append(int(value))
    elif isinstance(value, dict):
        _expect(kind, "bytes_list", name)
        feature.bytes_list.value.append(decode_b64_object(value))
    elif isinstance(value, str):
        _expect(kind, "bytes_list", name)
        feature.bytes_list.value.append(value.encode("utf-8"))
    elif isinstance(value, int) and value <= _UINT64_MAX and value >= _INT64_MIN:
        _expect(kind, "int64_list", name)
        if value > _INT64_MAX:
            raise invalid_argument(
                f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        feature.int64_list.value.append(value)
    else:  # a float, or an integer beyond 64 bits (a double to rapidjson)
        _expect(kind, "float_list", name)
        try:
            feature.float_list.value.append(float(value))
        except OverflowError:
            feature.float_list.value.append(float("inf") if value > 0 else float("-inf"))


_KIND_WORDS = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}


def _expect(kind: str | None, wanted: str, name: str) -> None:
    if kind is not None and kind != wanted:
        raise invalid_argument(f"Unexpected element type in feature: {name} expecting type: "
                               f"{_KIND_WORDS[kind]}")


def encode_classify_results(results: list[list[tuple[bytes, float]]]) -> bytes:
    """``{"results": [[["label", score], ...], ...]}`` (MakeJsonFromClassificationResult)."""
    if not results:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    rows = ["[" + ", ".join(
        "[" + json.dumps(label.decode("utf-8", errors="replace")) + ", " + decimal_string(score)
        + "]" for label, score in classes) + "]" for classes in results]
    return ('{"results": [' + ", ".join(rows) + "]}").encode()


def encode_regress_results(values: list[float]) -> bytes:
    """``{"results": [value, ...]}`` (MakeJsonFromRegressionResult)."""
    if not values:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    return ('{"results": [' + ", ".join(decimal_string(v) for v in values) + "]}").encode()
