"""The model store: version folders on disk -> loaded `Servable`s, kept in step by polling.

`ModelStore` loads every version folder of each configured model (or those its
version policy names), polls the folders and loads / unloads versions without a
restart (a broken folder is retried a few times, then again once its files change),
resolves versions and labels as TF Serving does, and answers status and metadata.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

from deeplense_tf.errors import ConfigError
from deeplense_tf.serving.batching import BatchingOptions
from deeplense_tf.serving.config import ModelConfig
from deeplense_tf.serving.metadata import metadata_json
from deeplense_tf.serving.metrics import Metrics
from deeplense_tf.serving.servable import DEFAULT_MAX_REQUEST_BATCH, DEFAULT_SIGNATURE, Servable
from deeplense_tf.serving.status import invalid_argument, not_found

log = logging.getLogger("deeplense_tf.serving")


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
        max_request_batch: most rows (images) one request may carry, REST and gRPC.
        metrics: where requests and batch sizes are counted (a new `Metrics` if None).
    """

    def __init__(self, models: list[ModelConfig], *, poll_interval_s: float = 1.0,
                 batching: BatchingOptions | None = None, max_load_attempts: int = 3,
                 max_request_batch: int = DEFAULT_MAX_REQUEST_BATCH,
                 metrics: Metrics | None = None):
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ConfigError(f"model names must be unique, got {names}")
        self._models = {m.name: _ModelState(m) for m in models}
        self.poll_interval_s = float(poll_interval_s)
        self.batching = batching
        self.max_load_attempts = int(max_load_attempts)
        if int(max_request_batch) < 1:
            raise ConfigError(f"--max-request-batch must be >= 1, got {max_request_batch}")
        self.max_request_batch = int(max_request_batch)
        self.metrics = metrics if metrics is not None else Metrics()
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
                servable = Servable(
                    name, version, path, self.batching, max_request_batch=self.max_request_batch,
                    on_batch=lambda rows, _n=name, _v=version: self.metrics.record_batch(_n, _v, rows))
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


