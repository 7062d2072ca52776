"""TF Serving's gRPC API (``tensorflow-serving-api`` stubs) over a `ModelStore`.

`PredictionService`: Predict, Classify, Regress and GetModelMetadata (MultiInference
answers UNIMPLEMENTED). Every Predict / Classify / Regress is counted in the store's
metrics with entrypoint GRPC.
`ModelService`: GetModelStatus (HandleReloadConfigRequest answers UNIMPLEMENTED).
Errors carry TF Serving's canonical codes and messages, the same ones the REST
API turns into HTTP statuses.
"""

from __future__ import annotations

import logging
import time
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from deeplense_tf.errors import ConfigError
from deeplense_tf.serving.model_store import ModelStore
from deeplense_tf.serving.servable import DEFAULT_SIGNATURE
from deeplense_tf.serving.status import CODE_NAMES, ServingError, invalid_argument
from deeplense_tf.serving.tensor_protos import to_array, to_tensor_proto

log = logging.getLogger("deeplense_tf.serving")


def _abort(context, err: ServingError):
    code = getattr(grpc.StatusCode, err.code, grpc.StatusCode.UNKNOWN)
    context.abort(code, err.message)


def _spec_version_and_label(model_spec) -> tuple[int | None, str | None]:
    version = model_spec.version.value if model_spec.HasField("version") else None
    label = model_spec.version_label or None
    return version, label


# TensorProto value fields, and how many of their entries make one element.
_VALUE_FIELDS = (("float_val", 1), ("double_val", 1), ("int_val", 1), ("int64_val", 1),
                 ("bool_val", 1), ("string_val", 1), ("half_val", 1), ("uint32_val", 1),
                 ("uint64_val", 1), ("scomplex_val", 2), ("dcomplex_val", 2))


def _check_tensor_size(name: str, proto, *, max_rows: int, max_bytes: int) -> None:
    """Refuses a TensorProto whose shape asks for more than its data or our limits allow.

    TensorFlow fills a tensor that carries fewer values than its shape by repeating the
    last one, so a 51-byte proto can declare 3,000 images; the count is checked here,
    before anything is allocated (docs/security.md, "Server").
    """
    dims = [int(d.size) for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise invalid_argument(f"input '{name}' has a negative dimension in shape {dims}")
    if dims and dims[0] > max_rows:
        raise invalid_argument(f"input '{name}' has {dims[0]} rows; at most {max_rows} per "
                               "request (--max-request-batch)")
    elements = int(np.prod(dims, dtype=object)) if dims else 1
    try:
        itemsize = tf.dtypes.as_dtype(proto.dtype).size if proto.dtype != types_pb2.DT_STRING else 1
    except TypeError:
        raise invalid_argument(f"input '{name}' has an unknown dtype {proto.dtype}") from None
    if proto.tensor_content:
        sent = len(proto.tensor_content) // max(itemsize, 1)
    else:
        sent = sum(len(getattr(proto, field)) // per for field, per in _VALUE_FIELDS)
    if sent == elements:
        return
    if sent > elements or sent == 0 and elements > 0 and proto.dtype != types_pb2.DT_STRING:
        raise invalid_argument(f"input '{name}': shape {dims} holds {elements} elements but "
                               f"the request carries {sent} values")
    # Fewer values than elements: TensorFlow repeats the last one (make_tensor_proto does
    # this for a scalar and a shape). Allowed only up to what a request could have sent.
    if elements * max(itemsize, 1) > max_bytes:
        raise invalid_argument(
            f"input '{name}': shape {dims} asks for {elements} elements from {sent} values "
            f"sent, more than a {max_bytes}-byte request can carry (--max-request-bytes)")


def _serialized_examples(input_proto) -> list[bytes]:
    """An Input proto's examples serialized, the context merged into each (TF Serving's rule)."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in input_proto.example_list.examples]
    if kind == "example_list_with_context":
        listed = input_proto.example_list_with_context
        context = listed.context.SerializeToString()
        return [context + e.SerializeToString() for e in listed.examples]
    raise invalid_argument("Input is empty.")


def _fill_spec(out, spec, version: int) -> None:
    out.name = spec.name
    out.version.value = version
    out.signature_name = spec.signature_name or DEFAULT_SIGNATURE


def _tensor_to_array(name: str, proto, *, max_rows: int, max_bytes: int) -> np.ndarray:
    _check_tensor_size(name, proto, max_rows=max_rows, max_bytes=max_bytes)
    try:
        return to_array(proto, writable=False)  # read by TensorFlow only
    except Exception as err:  # noqa: BLE001 - any malformed TensorProto is the caller's error
        raise invalid_argument(f"input '{name}' is not a valid TensorProto: {err}") from None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, store: ModelStore, max_message_bytes: int):
        self.store = store
        self.max_message_bytes = int(max_message_bytes)

    def _record(self, request, api: str, version, code: str, started: float) -> None:
        self.store.metrics.record_request(request.model_spec.name, version, api, "GRPC", code,
                                          time.perf_counter() - started)

    def Predict(self, request, context):  # noqa: N802 - gRPC method names
        started = time.perf_counter()
        try:
            version, label = _spec_version_and_label(request.model_spec)
            signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
            inputs = {k: _tensor_to_array(k, v, max_rows=self.store.max_request_batch,
                                          max_bytes=self.max_message_bytes)
                      for k, v in request.inputs.items()}
            servable, outputs = self.store.predict(
                request.model_spec.name, signature, inputs, version=version, label=label,
                output_filter=list(request.output_filter))
        except ServingError as err:
            self._record(request, "predict", None, err.code, started)
            return _abort(context, err)
        self._record(request, "predict", servable.version, "OK", started)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(to_tensor_proto(value))
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        try:
            fields = list(request.metadata_field)
            if not fields:
                raise invalid_argument("GetModelMetadataRequest must specify at least one "
                                       "metadata_field")
            for field_name in fields:
                if field_name != "signature_def":
                    raise invalid_argument(f"Metadata field {field_name} is not supported")
            version, label = _spec_version_and_label(request.model_spec)
            servable = self.store.servable(request.model_spec.name, version, label)
        except ServingError as err:
            return _abort(context, err)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, proto in servable.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(proto)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(signature_map)
        return response

    def _run_examples(self, request, context, api: str):
        """Classify / Regress: the servable and its results, or None after aborting."""
        started, servable = time.perf_counter(), None
        try:
            examples = _serialized_examples(request.input)
            version, label = _spec_version_and_label(request.model_spec)
            servable = self.store.servable(request.model_spec.name, version, label)
            results = getattr(servable, api)(request.model_spec.signature_name, examples)
        except ServingError as err:
            self._record(request, api, servable and servable.version, err.code, started)
            _abort(context, err)
            return None
        self._record(request, api, servable.version, "OK", started)
        return servable, results

    def Classify(self, request, context):  # noqa: N802
        done = self._run_examples(request, context, "classify")
        if done is None:
            return None
        servable, results = done
        response = classification_pb2.ClassificationResponse()
        _fill_spec(response.model_spec, request.model_spec, servable.version)
        for classes in results:
            out = response.result.classifications.add()
            for label_bytes, score in classes:
                out.classes.add(label=label_bytes.decode("utf-8", errors="replace"), score=score)
        return response

    def Regress(self, request, context):  # noqa: N802
        done = self._run_examples(request, context, "regress")
        if done is None:
            return None
        servable, values = done
        response = regression_pb2.RegressionResponse()
        _fill_spec(response.model_spec, request.model_spec, servable.version)
        for value in values:
            response.result.regressions.add(value=value)
        return response

    def MultiInference(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "MultiInference is not served here; use Predict")


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, store: ModelStore):
        self.store = store

    def GetModelStatus(self, request, context):  # noqa: N802
        try:
            version, label = _spec_version_and_label(request.model_spec)
            statuses = self.store.model_status(request.model_spec.name, version, label)
        except ServingError as err:
            return _abort(context, err)
        response = get_model_status_pb2.GetModelStatusResponse()
        for entry in statuses:
            out = response.model_version_status.add()
            out.version = entry["version"]
            out.state = get_model_status_pb2.ModelVersionStatus.State.Value(entry["state"])
            out.status.error_code = CODE_NAMES.index(entry["error_code"])
            out.status.error_message = entry["error_message"]
        return response

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "config reload is not supported here; restart `deeplense serve`")


def start_grpc_server(store: ModelStore, host: str, port: int, *,
                      max_message_bytes: int, max_workers: int = 32) -> tuple[grpc.Server, int]:
    """Starts gRPC on host:port (0 = any free port); returns the server and its port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", int(max_message_bytes)),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a busy port is an error, not a shared listener
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(store, max_message_bytes), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(store), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as err:
        bound = 0
        log.debug("gRPC bind failed: %s", err)
    if not bound:
        raise ConfigError(f"--grpc-port {port}: cannot listen on {address} (port in use?)")
    server.start()
    return server, bound
