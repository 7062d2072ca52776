"""Client for TF Serving's gRPC API (``PredictionService`` and ``ModelService``).

Same methods and return values as `RestClient`, over gRPC with the
``tensorflow-serving-api`` stubs (which import TensorFlow for its protos).
Arrays travel as TensorProtos, so dtypes are kept exactly.

Example::

    client = GrpcClient("127.0.0.1:8500", model="deeplense")
    out = client.predict(images)          # {"log10_m_axion_ev": float32 [N], ...}
"""

from __future__ import annotations

import time

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from deeplense_tf.serving.metadata import metadata_json, parse_metadata
from deeplense_tf.serving.status import HTTP_STATUS, ServingError, code_name
from deeplense_tf.serving.status import wait_until_available as wait_for_version
from deeplense_tf.serving.tensor_protos import to_array, to_tensor_proto

_RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)


class GrpcClient:
    """Talks to one model over TF Serving's gRPC API.

    Args:
        target: ``host:port`` of the gRPC server.
        model: model name.
        timeout: seconds to wait for each answer (the call's deadline).
        retries: extra attempts after UNAVAILABLE (server starting, queue full).
        backoff_s: wait before the first retry, doubled for each further one.
        input_name: the input a bare array is sent as (the export contract's ``image``).
        max_message_bytes: largest message sent or received.
    """

    def __init__(self, target: str = "127.0.0.1:8500", model: str = "deeplense", *,
                 timeout: float = 30.0, retries: int = 3, backoff_s: float = 0.1,
                 input_name: str = "image", max_message_bytes: int = 256 * 2**20):
        self.target = target
        self.model = model
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.input_name = input_name
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", int(max_message_bytes)),
            ("grpc.max_receive_message_length", int(max_message_bytes)),
        ])
        self._predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._model_stub = model_service_pb2_grpc.ModelServiceStub(self._channel)

    # -- public API

    def status(self, version: int | None = None, label: str | None = None) -> list[dict]:
        """Version states: ``[{"version", "state", "error_code", "error_message"}]``."""
        request = get_model_status_pb2.GetModelStatusRequest()
        self._fill_spec(request.model_spec, version, label)
        response = self._call(self._model_stub.GetModelStatus, request)
        return [
            {
                "version": int(s.version),
                "state": get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
                "error_code": code_name(int(s.status.error_code)),
                "error_message": s.status.error_message,
            }
            for s in response.model_version_status
        ]

    def metadata(self, version: int | None = None, label: str | None = None) -> dict:
        """Model spec and signatures, the same dict `RestClient.metadata` returns."""
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._fill_spec(request.model_spec, version, label)
        request.metadata_field.append("signature_def")
        response = self._call(self._predict_stub.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        defs = {
            name: json_format.MessageToDict(sig, preserving_proto_field_name=True,
                                            always_print_fields_with_no_presence=True)
            for name, sig in signature_map.signature_def.items()
        }
        doc = metadata_json(response.model_spec.name, response.model_spec.version.value, defs)
        return parse_metadata(doc)

    def wait_until_available(self, timeout: float = 60.0, version: int | None = None,
                             label: str | None = None) -> list[dict]:
        """Polls `status` until a version is AVAILABLE; raises `ServingError` after `timeout` s."""
        return wait_for_version(lambda: self.status(version, label),
                                f"model {self.model} at {self.target}", timeout)

    def make_request(self, inputs, *, signature: str | None = None, version: int | None = None,
                     label: str | None = None, output_filter=None) -> predict_pb2.PredictRequest:
        """The PredictRequest `predict` sends (load tests build it once and send it often)."""
        request = predict_pb2.PredictRequest()
        self._fill_spec(request.model_spec, version, label)
        if signature:
            request.model_spec.signature_name = signature
        if not isinstance(inputs, dict):
            inputs = {self.input_name: inputs}
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(to_tensor_proto(value))
        request.output_filter.extend(output_filter or [])
        return request

    def predict(self, inputs, *, signature: str | None = None, version: int | None = None,
                label: str | None = None, output_filter=None) -> dict[str, np.ndarray]:
        """Runs a signature (default ``serving_default``); outputs by name as numpy arrays.

        `inputs` is an array (sent as `input_name`) or a dict of arrays by input name.
        """
        request = self.make_request(inputs, signature=signature, version=version, label=label,
                                    output_filter=output_filter)
        return self.predict_request(request)

    def predict_request(self, request: predict_pb2.PredictRequest) -> dict[str, np.ndarray]:
        """Sends a request made by `make_request`; outputs by name as numpy arrays."""
        response = self._call(self._predict_stub.Predict, request)
        return {name: to_array(proto) for name, proto in response.outputs.items()}

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing

    def _fill_spec(self, spec, version, label) -> None:
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        spec.name = self.model
        if version is not None:
            spec.version.value = int(version)
        elif label is not None:
            spec.version_label = str(label)

    def _call(self, method, request):
        attempt = 0
        while True:
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as err:
                code = err.code()
                if code in _RETRYABLE and attempt < self.retries:
                    time.sleep(self.backoff_s * 2**attempt)
                    attempt += 1
                    continue
                name = code.name if code is not None else "UNKNOWN"
                raise ServingError(name, err.details() or str(err),
                                   HTTP_STATUS.get(name, 500)) from None
