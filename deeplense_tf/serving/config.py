"""What to serve: the model list (TF Serving's ``--model_config_file``) and version labels.

`ModelConfig` is one model: its name in URLs, the folder of integer version folders,
the version policy and the labels. `read_model_config_file` reads TF Serving's
text-format ``ModelServerConfig``; `parse_labels` reads ``--labels stable=1,canary=2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deeplense_tf.errors import ConfigError


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




def _monitoring_config_class():
    """TF Serving's MonitoringConfig message (monitoring_config.proto), built at run time.

    tensorflow-serving-api does not ship this proto's Python module; two small messages
    described here give `text_format` the exact grammar TF Serving parses.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(
        name="deeplense_monitoring_config.proto", package="deeplense_tf.serving", syntax="proto3")
    prometheus = proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
                         label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2,
                         type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                         label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1,
                         type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                         type_name=".deeplense_tf.serving.PrometheusConfig",
                         label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("deeplense_tf.serving.MonitoringConfig"))


def read_monitoring_config_file(path: str | Path) -> str | None:
    """Reads TF Serving's ``--monitoring_config_file``; the Prometheus path, None when disabled.

    ``prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }``; an empty
    path means TF Serving's default, ``/monitoring/prometheus/metrics``.
    """
    from google.protobuf import text_format

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"monitoring config file {path}: cannot read it ({err})") from None
    config = _monitoring_config_class()()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise ConfigError(f"monitoring config file {path}: {err}") from None
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    where = prometheus.path or "/monitoring/prometheus/metrics"
    if not where.startswith("/"):
        raise ConfigError(f"monitoring config file {path}: path must start with /, got {where!r}")
    return where
