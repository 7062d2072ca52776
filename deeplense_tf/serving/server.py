"""A local server with TF Serving's REST (and gRPC) API, for users without Docker.

Serves SavedModels laid out as TF Serving expects (``BASE/<name>/<version>/``)
with the same endpoints, JSON formats, error JSON and status codes (see
``deeplense_tf/serving/json_tensors.py`` and the reference in
``shared/reference/tf-serving-rest.md``), so that the clients, scripts and
dashboards written against it work unchanged against ``tensorflow/serving``.

Pieces:

- `ModelStore` loads every version folder of each model (or the newest only,
  by policy), polls the folders and loads / unloads versions without a restart,
  resolves versions and labels, and runs predictions (through a
  `BatchScheduler` when batching is on).
- `RestApi` maps (method, path, body) to (HTTP status, JSON bytes); it has no
  sockets and is what the tests drive directly.
- `ModelServer` puts `RestApi` behind a stdlib ``ThreadingHTTPServer`` and
  starts the gRPC server (``grpc_server.py``) next to it.

Differences from TF Serving, on purpose: with no config file every version
found is served (TF Serving's default serves only the newest); a body over
``max_request_bytes`` gets 413; a failing batch does not fail its neighbours.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

from deeplense_tf import __version__
from deeplense_tf.errors import ConfigError
from deeplense_tf.serving.batching import BatchingOptions, BatchScheduler
from deeplense_tf.serving.json_tensors import (
    NUMPY_DTYPES,
    TensorInfo,
    encode_predict_response,
    parse_predict_body,
    request_inputs,
    shape_string,
)
from deeplense_tf.serving.metadata import metadata_json, status_json
from deeplense_tf.serving.status import (
    ServingError,
    code_name,
    failed_precondition,
    invalid_argument,
    not_found,
    unavailable,
)

log = logging.getLogger("deeplense_tf.serving")

DEFAULT_SIGNATURE = "serving_default"
DEFAULT_MAX_REQUEST_BYTES = 32 * 2**20  # 32 MiB: ~400 64x64 images as JSON
_MAX_SCHEDULERS = 32  # per version; distinct input shapes beyond this run unbatched
_DRAIN_LIMIT = 64 * 2**20  # an oversized body is read (and dropped) up to this, then cut off

# TF Serving's URL grammar (http_rest_api_util.cc), case-insensitive like its RE2 patterns.
_PREDICT_RE = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)")
_STATUS_RE = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
_V1_RE = re.compile(r"(?i)/v1/")


# ---------------------------------------------------------------------------
# Configuration


@dataclass
class ModelConfig:
    """One model to serve.

    Attributes:
        name: the model name in URLs (``/v1/models/<name>``).
        base_path: the folder holding integer version folders.
        labels: version labels, e.g. ``{"stable": 1, "canary": 2}``.
        version_policy: ``"all"`` (every version folder), ``"latest"`` (the
            `num_latest` highest) or ``"specific"`` (`specific_versions`).
    """

    name: str
    base_path: Path
    labels: dict[str, int] = field(default_factory=dict)
    version_policy: str = "all"
    num_latest: int = 1
    specific_versions: tuple[int, ...] = ()

    def __post_init__(self):
        self.base_path = Path(self.base_path)
        if self.version_policy not in ("all", "latest", "specific"):
            raise ConfigError(
                f"model {self.name}: version policy must be all, latest or specific, "
                f"got {self.version_policy!r}")


def parse_labels(items: list[str] | str | None) -> dict[str, int]:
    """``["stable=1", "canary=2"]`` or ``"stable=1,canary=2"`` -> ``{"stable": 1, "canary": 2}``."""
    if not items:
        return {}
    if isinstance(items, str):
        items = [items]
    labels = {}
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            name, sep, version = part.partition("=")
            if not sep or not name.strip() or not version.strip().isdigit():
                raise ConfigError(f"--labels: expected LABEL=VERSION (e.g. stable=1), got {part!r}")
            labels[name.strip()] = int(version)
    return labels


def read_model_config_file(path: str | Path) -> list[ModelConfig]:
    """Reads TF Serving's ``--model_config_file`` (text-format ``ModelServerConfig``).

    Relative ``base_path`` values are taken relative to the config file's folder.
    As in TF Serving, a model without ``model_version_policy`` serves its newest version only.
    """
    path = Path(path)
    try:
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2
    except ImportError as err:  # pragma: no cover - installed by `make install`
        raise ConfigError(
            f"model config file {path}: reading it needs tensorflow-serving-api ({err})") from None
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"model config file {path}: cannot read it ({err})") from None
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise ConfigError(f"model config file {path}: {err}") from None
    if not config.HasField("model_config_list") or not config.model_config_list.config:
        raise ConfigError(f"model config file {path}: no model_config_list with a config entry")
    models = []
    for entry in config.model_config_list.config:
        if not entry.name or not entry.base_path:
            raise ConfigError(f"model config file {path}: every config needs name and base_path")
        if entry.model_platform not in ("", "tensorflow"):
            raise ConfigError(f"model config file {path}: model {entry.name}: platform "
                              f"{entry.model_platform!r} is not served here (only tensorflow)")
        base = Path(entry.base_path)
        if not base.is_absolute():
            base = path.parent / base
        choice = entry.model_version_policy.WhichOneof("policy_choice")
        kwargs = {}
        if choice == "all":
            kwargs["version_policy"] = "all"
        elif choice == "specific":
            kwargs["version_policy"] = "specific"
            kwargs["specific_versions"] = tuple(entry.model_version_policy.specific.versions)
        else:
            kwargs["version_policy"] = "latest"
            kwargs["num_latest"] = max(1, entry.model_version_policy.latest.num_versions)
        models.append(ModelConfig(name=entry.name, base_path=base,
                                  labels=dict(entry.version_labels), **kwargs))
    return models


# ---------------------------------------------------------------------------
# One loaded version


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
                 batching: BatchingOptions | None = None):
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
        checked, rows = {}, None
        for key in sorted(inputs):
            info = sig.inputs[key]
            arr = np.asarray(inputs[key])
            want = NUMPY_DTYPES.get(info.dtype)
            if want is not None and arr.dtype != want and not (
                    want == np.dtype(object) and arr.dtype.kind in "OSU"):
                raise invalid_argument(
                    f"input '{key}' has dtype {arr.dtype.name} but signature '{sig.name}' "
                    f"expects {info.dtype}")
            if info.shape is not None and (
                    arr.ndim != len(info.shape)
                    or any(d is not None and d != a for d, a in zip(info.shape, arr.shape))):
                raise invalid_argument(
                    f"input '{key}' has shape {shape_string(arr.shape)} but signature "
                    f"'{sig.name}' expects {shape_string(info.shape)}")
            if arr.ndim >= 1:
                if arr.shape[0] == 0:
                    raise invalid_argument(f"input '{key}' is an empty batch (0 rows)")
                if rows is not None and arr.shape[0] != rows:
                    raise invalid_argument(
                        f"inputs have different batch sizes: '{key}' has {arr.shape[0]} rows, "
                        f"others {rows}")
                rows = arr.shape[0]
            checked[key] = arr
        return checked

    def _scheduler(self, signature: str, inputs: dict[str, np.ndarray]) -> BatchScheduler | None:
        if any(a.ndim == 0 for a in inputs.values()):
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
                    name=f"{self.name}-{self.version}-{signature}")
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


# ---------------------------------------------------------------------------
# The store: versions on disk -> loaded servables


class _ModelState:
    def __init__(self, config: ModelConfig):
        self.config = config
        self.servables: dict[int, Servable] = {}
        # version -> {"state", "error_code", "error_message"} for versions ever seen.
        self.history: dict[int, dict] = {}
        # version -> (failed attempts, fingerprint of the folder when it failed)
        self.failures: dict[int, tuple[int, tuple]] = {}
        self.warned_missing = False


def _folder_fingerprint(path: Path) -> tuple:
    """Changes whenever a file under `path` is added, removed or rewritten."""
    items = []
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.stat(os.path.join(root, f))
            except OSError:
                continue
            items.append((os.path.join(root, f), st.st_size, st.st_mtime_ns))
    return tuple(sorted(items))


class ModelStore:
    """Loads model versions from disk, keeps them in step with the folders, runs predictions.

    Args:
        models: what to serve.
        poll_interval_s: seconds between folder scans (0 = scan once at `start`).
        batching: dynamic batching settings, or None for one model call per request.
        max_load_attempts: loads tried for a broken version folder before waiting
            for its files to change.
    """

    def __init__(self, models: list[ModelConfig], *, poll_interval_s: float = 1.0,
                 batching: BatchingOptions | None = None, max_load_attempts: int = 3):
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ConfigError(f"model names must be unique, got {names}")
        self._models = {m.name: _ModelState(m) for m in models}
        self.poll_interval_s = float(poll_interval_s)
        self.batching = batching
        self.max_load_attempts = int(max_load_attempts)
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def model_names(self) -> list[str]:
        return list(self._models)

    @property
    def models(self) -> list[ModelConfig]:
        return [state.config for state in self._models.values()]

    def start(self) -> ModelStore:
        """Loads what is on disk now and starts polling the folders."""
        self.refresh()
        if self.poll_interval_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._poll, name="model-store-poll", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._lock:
            servables = [s for m in self._models.values() for s in m.servables.values()]
            for m in self._models.values():
                m.servables.clear()
        for servable in servables:
            servable.close()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - polling must outlive one bad scan
                log.exception("model folder scan failed; retrying at the next poll")

    # -- loading

    def refresh(self) -> None:
        """Scans every model's folder once: loads new versions, unloads removed ones."""
        with self._refresh_lock:
            for state in self._models.values():
                self._refresh_model(state)

    def _versions_on_disk(self, state: _ModelState) -> dict[int, Path]:
        base = state.config.base_path
        try:
            entries = sorted(os.listdir(base))
        except OSError:
            if not state.warned_missing:
                log.warning("model %s: base path %s does not exist (yet)", state.config.name, base)
                state.warned_missing = True
            return {}
        found = {}
        for entry in entries:
            # Only integer names: writers use a temporary name and rename into place.
            if not (entry.isascii() and entry.isdigit()):
                continue
            path = base / entry
            if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
                found.setdefault(int(entry), path)
        return found

    def _aspired(self, config: ModelConfig, on_disk: dict[int, Path]) -> dict[int, Path]:
        if config.version_policy == "latest":
            keep = sorted(on_disk)[-config.num_latest:]
        elif config.version_policy == "specific":
            keep = [v for v in on_disk if v in set(config.specific_versions)]
        else:
            keep = list(on_disk)
        return {v: on_disk[v] for v in keep}

    def _refresh_model(self, state: _ModelState) -> None:
        name = state.config.name
        aspired = self._aspired(state.config, self._versions_on_disk(state))
        for version in sorted(set(aspired) - set(state.servables), reverse=True):
            path = aspired[version]
            fingerprint = _folder_fingerprint(path)
            attempts, failed_at = state.failures.get(version, (0, None))
            if attempts and failed_at == fingerprint and attempts >= self.max_load_attempts:
                continue  # gave up until the files change
            if failed_at != fingerprint:
                attempts = 0
            with self._lock:
                state.history[version] = {"state": "LOADING", "error_code": "OK", "error_message": ""}
            try:
                servable = Servable(name, version, path, self.batching)
            except Exception as err:  # noqa: BLE001 - a broken folder must not stop the others
                state.failures[version] = (attempts + 1, fingerprint)
                message = f"Failed to load version {version} of model {name} from {path}: {err}"
                log.warning(message)
                with self._lock:
                    state.history[version] = {
                        "state": "END", "error_code": "UNKNOWN", "error_message": message}
                continue
            state.failures.pop(version, None)
            with self._lock:
                state.servables[version] = servable
                state.history[version] = {"state": "AVAILABLE", "error_code": "OK",
                                          "error_message": ""}
            log.info("model %s: version %d loaded from %s", name, version, path)
        for version in sorted(set(state.servables) - set(aspired)):
            with self._lock:
                servable = state.servables.pop(version)
                state.history[version] = {"state": "END", "error_code": "OK", "error_message": ""}
            servable.close()
            log.info("model %s: version %d unloaded", name, version)

    # -- lookups

    def _state(self, name: str, version: int | None) -> _ModelState:
        state = self._models.get(name)
        if state is None:
            raise not_found(f"Servable not found for request: {_request_string(name, version)}")
        return state

    def resolve_label(self, name: str, label: str) -> int:
        state = self._models.get(name)
        if state is None or label not in state.config.labels:
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        return state.config.labels[label]

    def servable(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable for a request; NOT_FOUND / INVALID_ARGUMENT as TF Serving answers."""
        if version is not None and label is not None:
            raise invalid_argument(f"Both model version ({version}) and model version label "
                                   f"({label}) cannot be supplied.")
        if label is not None:
            version = self.resolve_label(name, label)
        state = self._state(name, version)
        with self._lock:
            if version is None:
                if state.servables:
                    return state.servables[max(state.servables)]
            elif version in state.servables:
                return state.servables[version]
        raise not_found(f"Servable not found for request: {_request_string(name, version)}")

    def model_status(self, name: str, version: int | None = None,
                     label: str | None = None) -> list[dict]:
        """Version states as plain dicts (see `deeplense_tf.serving.metadata`), newest first."""
        if label is not None:
            version = self.resolve_label(name, label)
        state = self._models.get(name)
        with self._lock:
            history = dict(state.history) if state is not None else {}
        if not history:
            raise not_found(f"Could not find any versions of model {name}")
        if version is not None:
            if version not in history:
                raise not_found(f"Could not find version {version} of model {name}")
            history = {version: history[version]}
        return [{"version": v, **history[v]} for v in sorted(history, reverse=True)]

    def metadata(self, name: str, version: int | None = None, label: str | None = None) -> dict:
        """TF Serving's GetModelMetadata JSON for the resolved version."""
        servable = self.servable(name, version, label)
        defs = {k: s.proto_json for k, s in servable.signatures.items()}
        return metadata_json(name, servable.version, defs)

    def predict(self, name: str, signature: str, inputs: dict[str, np.ndarray], *,
                version: int | None = None, label: str | None = None,
                output_filter: list[str] | None = None) -> tuple[Servable, dict[str, np.ndarray]]:
        """Runs a prediction; returns the servable that answered and its outputs."""
        servable = self.servable(name, version, label)
        return servable, servable.run(signature or DEFAULT_SIGNATURE, inputs, output_filter)


def _request_string(name: str, version: int | None) -> str:
    # TF Serving's ServableRequest::DebugString().
    return f"Latest({name})" if version is None else f"Specific({name}, {version})"


# ---------------------------------------------------------------------------
# REST: (method, path, body) -> (status, JSON)


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


# ---------------------------------------------------------------------------
# HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse one connection per thread
    server_version = f"deeplense-serving/{__version__}"
    sys_version = ""
    timeout = 120.0  # seconds an idle keep-alive connection is kept
    # Small answers must not wait for the client's delayed ACK (Nagle): ~40 ms each otherwise.
    disable_nagle_algorithm = True

    def do_GET(self):  # noqa: N802 - BaseHTTPRequestHandler's naming
        self._serve("GET")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def do_PUT(self):  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self):  # noqa: N802
        self._serve("DELETE")

    def do_PATCH(self):  # noqa: N802
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        try:
            body, refusal = self._read_body(self.server.max_request_bytes)
        except (TimeoutError, ConnectionError, ValueError):
            self.close_connection = True
            return
        if refusal is not None:
            self._reply(*refusal, close=True)
            return
        status, payload = self.server.api.handle(method, urlsplit(self.path).path, body)
        self._reply(status, payload)

    def _read_body(self, limit: int):
        """(body, None), or (None, (status, payload)) when the body is refused."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b"", None
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            return None, (400, error_body(f"Invalid Content-Length header: {length_text!r}"))
        if length > limit:
            self._drain(length)
            return None, (413, _too_large(length, limit))
        body = self.rfile.read(length)
        if len(body) < length:
            raise ConnectionError("client closed the connection mid-body")
        return body, None

    def _read_chunked(self, limit: int):
        chunks, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks), None
            total += size
            if total > limit:
                return None, (413, _too_large(total, limit))
            chunks.append(self.rfile.read(size))
            self.rfile.readline(16)

    def _drain(self, length: int) -> None:
        # Reading the refused body lets the client finish sending and see our 413
        # instead of a reset; past _DRAIN_LIMIT we just hang up.
        remaining = min(length, _DRAIN_LIMIT)
        self.connection.settimeout(5.0)
        try:
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                if not chunk:
                    break
                remaining -= len(chunk)
        except (TimeoutError, OSError):
            pass

    def _reply(self, status: int, payload: bytes, close: bool = False) -> None:
        phrase = self.responses.get(status, ("",))[0]
        lines = [f"{self.protocol_version} {status} {phrase}",
                 f"Server: {self.version_string()}", f"Date: {self.date_time_string()}",
                 "Content-Type: application/json", f"Content-Length: {len(payload)}"]
        if close:
            lines.append("Connection: close")
            self.close_connection = True
        self.log_request(status, len(payload))
        try:
            # Status line, headers and body in one send: split sends of a small answer
            # stall on the client's delayed ACK.
            self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        except (TimeoutError, ConnectionError):
            self.close_connection = True

    def send_error(self, code, message=None, explain=None):
        """Protocol-level errors (bad request line, huge headers) as JSON, not HTML."""
        short = self.responses.get(code, ("Error",))[0]
        self._reply(code, error_body(message or short), close=True)

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.debug("%s %s", self.address_string(), format % args)


def _too_large(length: int, limit: int) -> bytes:
    return error_body(f"Request body of {length} bytes exceeds the limit of {limit} bytes "
                      "(--max-request-bytes)")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # listen backlog; the default 5 drops bursts of connections

    def __init__(self, address, api: RestApi, max_request_bytes: int):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.api = api
        self.max_request_bytes = int(max_request_bytes)
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address):
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class ModelServer:
    """REST (and gRPC) in front of a `ModelStore`.

    Args:
        store: what to serve (started by `start` if it is not already).
        host: address to listen on; 127.0.0.1 unless you mean to expose it.
        rest_port: REST port (0 = any free port; the chosen one is in `rest_port` after `start`).
        grpc_port: gRPC port (0 = any free port, None = no gRPC).
        max_request_bytes: largest request body (REST) or message (gRPC) accepted.
    """

    def __init__(self, store: ModelStore, *, host: str = "127.0.0.1", rest_port: int = 8501,
                 grpc_port: int | None = 8500,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, grpc_max_workers: int = 32):
        self.store = store
        self.host = host
        self.rest_port = rest_port
        self.grpc_port = grpc_port
        self.max_request_bytes = int(max_request_bytes)
        self.grpc_max_workers = int(grpc_max_workers)
        self._http: _HTTPServer | None = None
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
            self._http = _HTTPServer((self.host, self.rest_port), RestApi(self.store),
                                     self.max_request_bytes)
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
