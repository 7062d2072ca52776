"""One loaded model version: its signatures, the checks on inputs, and the TensorFlow call.

`Servable` loads a SavedModel version folder, reads its SignatureDefs (for metadata
answers and input checks), replays the warm-up requests TF Serving would, checks
request inputs against a signature (names, dtypes, shapes, batch sizes) and runs the
signature function, through a `BatchScheduler` per input shape when batching is on.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeplense_tf.serving.batching import BatchingOptions, BatchScheduler
from deeplense_tf.serving.json_tensors import NUMPY_DTYPES, TensorInfo, shape_string
from deeplense_tf.serving.status import (
    ServingError,
    code_name,
    failed_precondition,
    invalid_argument,
    unavailable,
)

log = logging.getLogger("deeplense_tf.serving")

DEFAULT_SIGNATURE = "serving_default"
DEFAULT_MAX_REQUEST_BATCH = 1024  # rows per request; ~16 MB of float32 64x64 images
# TF Serving's signature keys for Classify and Regress (signature_constants.h).
CLASSIFY_INPUTS = "inputs"
CLASSIFY_CLASSES = "classes"
CLASSIFY_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"
_MAX_SCHEDULERS = 32  # per version; distinct input shapes beyond this run unbatched


@dataclass
class SignatureInfo:
    """A signature's method, inputs and outputs, read from the SavedModel's SignatureDef."""

    name: str
    method_name: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    proto_json: dict  # the SignatureDef as protobuf JSON (for metadata answers)


def _tensor_info(proto) -> TensorInfo:
    from tensorflow.core.framework import types_pb2

    shape_proto = proto.tensor_shape
    shape = None if shape_proto.unknown_rank else tuple(
        None if d.size < 0 else int(d.size) for d in shape_proto.dim)
    return TensorInfo(dtype=types_pb2.DataType.Name(proto.dtype), shape=shape)


def read_signature_defs(path: str | Path) -> dict:
    """The SignatureDef protos of a SavedModel folder's ``serve`` meta graph, by name."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(path)
    saved = saved_model_pb2.SavedModel()
    if (path / "saved_model.pb").exists():
        saved.ParseFromString((path / "saved_model.pb").read_bytes())
    else:
        text_format.Parse((path / "saved_model.pbtxt").read_text(), saved)
    graphs = [g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags] or list(saved.meta_graphs)
    if not graphs:
        raise ValueError(f"{path}: the SavedModel has no meta graph")
    return {k: v for k, v in graphs[0].signature_def.items() if not k.startswith("__")}


def _debug_string(proto) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(proto, as_one_line=True)


def _examples_array(examples: list[bytes]) -> np.ndarray:
    if not examples:
        raise invalid_argument("Input is empty.")
    arr = np.empty(len(examples), dtype=object)
    arr[:] = examples
    return arr


def _clean_tf_message(message: str) -> str:
    """The kernel's own words from an eager TF error (drops 'Graph execution error' framing)."""
    kept = []
    for line in message.splitlines():
        stripped = line.strip()
        if (not stripped or stripped == "Graph execution error:"
                or stripped.startswith(("Detected at node", "<stack traces", "File \""))):
            continue
        kept.append(line.rstrip())
    text = "\n".join(kept) if kept else message
    return re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", text)


class Servable:
    """One loaded version of a model: its signatures and how to run them.

    `run` checks inputs against the signature (names, dtypes, shapes, empty
    batch), runs the signature function (through a batch scheduler when
    `batching` is given) and returns numpy outputs.
    """

    def __init__(self, name: str, version: int, path: str | Path,
                 batching: BatchingOptions | None = None, *,
                 max_request_batch: int = DEFAULT_MAX_REQUEST_BATCH,
                 on_batch: Callable[[int], None] | None = None):
        import tensorflow as tf
        from google.protobuf import json_format

        self._tf = tf
        self.name = name
        self.version = int(version)
        self.path = Path(path)
        self._loaded = tf.saved_model.load(str(self.path), tags=["serve"])
        self.signatures: dict[str, SignatureInfo] = {}
        # SignatureDef protos by name, for gRPC metadata answers.
        self.signature_defs = {k: v for k, v in read_signature_defs(self.path).items()
                               if k in self._loaded.signatures}
        for sig_name, proto in self.signature_defs.items():
            self.signatures[sig_name] = SignatureInfo(
                name=sig_name,
                method_name=proto.method_name,
                inputs={k: _tensor_info(v) for k, v in proto.inputs.items()},
                outputs={k: _tensor_info(v) for k, v in proto.outputs.items()},
                proto_json=json_format.MessageToDict(
                    proto, preserving_proto_field_name=True,
                    always_print_fields_with_no_presence=True),
            )
        self._functions = {k: self._loaded.signatures[k] for k in self.signatures}
        self._batching = batching
        self.max_request_batch = int(max_request_batch)
        self._on_batch = on_batch
        self._schedulers: dict[tuple, BatchScheduler] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.warmup_requests = self._warm_up()

    def _warm_up(self, limit: int = 1000) -> int:
        """Replays ``assets.extra/tf_serving_warmup_requests`` as TF Serving does; returns the count.

        The first call of a signature builds and optimises its graph (hundreds of ms);
        doing it at load keeps that off the first client's request.
        """
        path = self.path / "assets.extra" / "tf_serving_warmup_requests"
        if not path.is_file():
            return 0
        try:
            from tensorflow_serving.apis import prediction_log_pb2
        except ImportError:  # pragma: no cover - installed by `make install`
            log.warning("%s: tensorflow-serving-api is missing; warm-up skipped", path)
            return 0
        count = 0
        try:
            for record in self._tf.data.TFRecordDataset(str(path)).take(limit):
                entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
                if not entry.HasField("predict_log"):
                    continue
                request = entry.predict_log.request
                inputs = {k: self._tf.make_ndarray(v) for k, v in request.inputs.items()}
                signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
                try:
                    self._call(signature, self._checked_inputs(self.signature(signature), inputs))
                except ServingError as err:
                    log.warning("%s: warm-up request failed: %s", path, err.message)
                    continue
                count += 1
        except Exception as err:  # noqa: BLE001 - a bad warm-up file must not block serving
            log.warning("%s: warm-up stopped after %d requests: %s", path, count, err)
        return count

    def signature(self, name: str) -> SignatureInfo:
        sig = self.signatures.get(name or DEFAULT_SIGNATURE)
        if sig is None:
            raise failed_precondition(f'Serving signature key "{name}" not found.')
        return sig

    def run(self, signature: str, inputs: dict[str, np.ndarray],
            output_filter: list[str] | None = None) -> dict[str, np.ndarray]:
        """Runs signature `signature` on `inputs`; outputs by name as numpy arrays."""
        sig = self.signature(signature)
        inputs = self._checked_inputs(sig, inputs)
        wanted = list(output_filter or [])
        unknown = [o for o in wanted if o not in sig.outputs]
        if unknown:
            raise invalid_argument(
                f"output tensor alias not found in signature: {unknown[0]} Outputs expected to "
                f"be in the set {{{','.join(sorted(sig.outputs))}}}.")
        scheduler = self._scheduler(sig.name, inputs) if self._batching else None
        if scheduler is not None:
            outputs = scheduler.submit(inputs)
        else:
            outputs = self._call(sig.name, inputs)
        if wanted:
            outputs = {k: outputs[k] for k in wanted}
        return outputs

    def classify(self, signature: str, examples: list[bytes]) -> list[list[tuple[bytes, float]]]:
        """Runs a classification signature on serialized tf.Examples.

        Returns, per example, its (label, score) pairs; the label is b"" when the signature
        has no ``classes`` output and the score 0.0 when it has no ``scores`` (TF Serving's
        classifier.cc, with its messages for a signature or outputs of the wrong form).
        """
        sig, proto = self._example_signature(signature)
        if len(proto.inputs) != 1:
            raise invalid_argument("Expected one input Tensor.")
        if len(proto.outputs) not in (1, 2):
            raise invalid_argument(
                f"Expected one or two output Tensors, found {len(proto.outputs)}")
        if CLASSIFY_INPUTS not in proto.inputs:
            raise invalid_argument(
                f"No classification inputs found in SignatureDef: {_debug_string(proto)}")
        if CLASSIFY_CLASSES not in proto.outputs and CLASSIFY_SCORES not in proto.outputs:
            raise invalid_argument(
                'Expected classification signature outputs to contain at least one of "classes" '
                f'or "scores". Signature was: {_debug_string(proto)}')
        outputs = self._call(sig.name, {CLASSIFY_INPUTS: _examples_array(examples)})
        classes, scores = outputs.get(CLASSIFY_CLASSES), outputs.get(CLASSIFY_SCORES)
        count = len(examples)
        for tensor, what, dtype in ((classes, "classes", "DT_STRING"), (scores, "scores", "DT_FLOAT")):
            if tensor is None:
                continue
            if tensor.ndim != 2:
                raise invalid_argument("Expected Tensor shape: [batch_size num_classes] but got "
                                       f"{shape_string(tensor.shape)}")
            if (dtype == "DT_STRING") != (tensor.dtype.kind in "OSU") or (
                    dtype == "DT_FLOAT" and tensor.dtype != np.float32):
                raise invalid_argument(f"Expected {what} Tensor of {dtype}. Got: {tensor.dtype.name}")
            if tensor.shape[0] != count:
                raise invalid_argument(f"Expected {what} output batch size of {count}. "
                                       f"Got: {tensor.shape[0]}")
        if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
            raise invalid_argument("Tensors class and score should match in dim_size(1). Got "
                                   f"{classes.shape[1]} vs. {scores.shape[1]}")
        width = (classes if classes is not None else scores).shape[1]
        return [[(bytes(classes[i, c]) if classes is not None else b"",
                  float(scores[i, c]) if scores is not None else 0.0) for c in range(width)]
                for i in range(count)]

    def regress(self, signature: str, examples: list[bytes]) -> list[float]:
        """Runs a regression signature on serialized tf.Examples; one float per example.

        TF Serving's regressor.cc: one ``inputs`` input, one ``outputs`` output of shape
        [batch] or [batch, 1], float32.
        """
        sig, proto = self._example_signature(signature)
        if len(proto.inputs) != 1:
            raise invalid_argument("Expected one input Tensor.")
        if len(proto.outputs) != 1:
            raise invalid_argument("Expected one output Tensor.")
        if REGRESS_INPUTS not in proto.inputs:
            raise invalid_argument(
                f"No regression inputs found in SignatureDef: {_debug_string(proto)}")
        if REGRESS_OUTPUTS not in proto.outputs:
            raise invalid_argument(
                f"No regression outputs found in SignatureDef: {_debug_string(proto)}")
        values = self._call(sig.name, {REGRESS_INPUTS: _examples_array(examples)})[REGRESS_OUTPUTS]
        count = len(examples)
        if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
            raise invalid_argument(
                "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but "
                f"got {shape_string(values.shape)}")
        if values.shape[0] != count:
            raise invalid_argument(
                f"Input batch size did not match output batch size: {count} vs. {values.shape[0]}")
        if values.dtype != np.float32:
            raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {values.dtype.name}")
        return [float(v) for v in values.reshape(-1)]

    def _example_signature(self, name: str):
        key = name or DEFAULT_SIGNATURE
        sig = self.signatures.get(key)
        if sig is None:
            raise invalid_argument(f"No signature was found with the name: {key}")
        return sig, self.signature_defs[key]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            schedulers = list(self._schedulers.values())
            self._schedulers.clear()
        for scheduler in schedulers:
            scheduler.close()

    def batch_sizes(self) -> list[int]:
        """Rows per model call made by the batch schedulers so far (empty without batching)."""
        with self._lock:
            return [n for s in self._schedulers.values() for n in list(s.batch_sizes)]

    def _checked_inputs(self, sig: SignatureInfo, inputs: dict[str, np.ndarray]):
        expected = set(sig.inputs)
        extra = sorted(set(inputs) - expected)
        if extra:
            raise invalid_argument(
                f"input tensor alias not found in signature: {extra[0]}. Inputs expected to be "
                f"in the set {{{','.join(sorted(expected))}}}.")
        missing = sorted(expected - set(inputs))
        if missing:
            raise invalid_argument(
                f"Request inputs do not match required inputs for model `{self.name}`. "
                f"Send extra: {{}}. Missing but required: {{{','.join(missing)}}}.")
        checked = {}
        for key in sorted(inputs):
            info = sig.inputs[key]
            arr = np.asarray(inputs[key])
            want = NUMPY_DTYPES.get(info.dtype)
            if want is not None and arr.dtype != want and not (
                    want == np.dtype(object) and arr.dtype.kind in "OSU"):
                raise invalid_argument(
                    f"input '{key}' has dtype {arr.dtype.name} but signature '{sig.name}' "
                    f"expects {info.dtype}")
            # Shapes are the graph's business, as in TF Serving: a signature declaring
            # [-1, 1] may well accept [[1, 2], [3, 4]], and the export checks its own
            # sizes in the graph with messages that name the problem.
            if arr.ndim >= 1 and arr.shape[0] > self.max_request_batch:
                raise invalid_argument(
                    f"input '{key}' has {arr.shape[0]} rows; at most {self.max_request_batch} "
                    "per request (--max-request-batch)")
            checked[key] = arr
        return checked

    def _scheduler(self, signature: str, inputs: dict[str, np.ndarray]) -> BatchScheduler | None:
        # Only requests whose inputs share one first dimension can be cut back apart.
        rows = {a.shape[0] if a.ndim else None for a in inputs.values()}
        if len(rows) != 1 or None in rows or 0 in rows:
            return None
        key = (signature,) + tuple(
            (k, a.shape[1:], a.dtype.str) for k, a in sorted(inputs.items()))
        with self._lock:
            if self._closed:
                raise unavailable(f"Servable {self.name} version {self.version} is unloading")
            scheduler = self._schedulers.get(key)
            if scheduler is None and len(self._schedulers) < _MAX_SCHEDULERS:
                scheduler = BatchScheduler(
                    lambda arrays, _s=signature: self._call(_s, arrays), self._batching,
                    name=f"{self.name}-{self.version}-{signature}", on_batch=self._on_batch)
                self._schedulers[key] = scheduler
            return scheduler

    def _call(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tf = self._tf
        try:
            result = self._functions[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        except tf.errors.OpError as err:
            raise ServingError(code_name(err.error_code), _clean_tf_message(err.message)) from None
        except (TypeError, ValueError) as err:
            raise invalid_argument(str(err)) from None
        if not isinstance(result, dict):
            result = {"output_0": result}
        return {k: v.numpy() for k, v in result.items()}


