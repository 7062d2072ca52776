"""What operators deploy (serving/): files the server and TF Serving read, and the load test."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from serving_fixtures import MODEL_NAME, write_fixture_model

from deeplense_tf.serving.batching import BatchingOptions
from deeplense_tf.serving.config import ModelConfig, read_model_config_file
from deeplense_tf.serving.model_store import ModelStore
from deeplense_tf.serving.server import ModelServer

SERVING = Path(__file__).resolve().parents[1] / "serving"


def test_models_config_and_batching_parameters_parse():
    (model,) = read_model_config_file(SERVING / "models.config")
    assert (model.name, str(model.base_path), model.version_policy) == (
        "deeplense", "/models/deeplense", "all")
    assert model.labels == {"stable": 1}
    options = BatchingOptions.from_file(SERVING / "batching_parameters.txt")
    assert options.max_batch_size == 32 and options.batch_timeout_micros == 2000


def test_kubernetes_manifests_probe_the_model_and_match_the_service(tmp_path):
    config_map, deployment = yaml.safe_load_all((SERVING / "k8s" / "deployment.yaml").read_text())
    (service,) = yaml.safe_load_all((SERVING / "k8s" / "service.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"].startswith("/v1/models/deeplense")
    assert container["livenessProbe"]["httpGet"]["path"] == "/v1/models/deeplense"
    assert {p["containerPort"] for p in container["ports"]} == {8500, 8501}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    # The ConfigMap's files are valid for TF Serving's parsers (ours use the same protos).
    (tmp_path / "models.config").write_text(config_map["data"]["models.config"])
    assert read_model_config_file(tmp_path / "models.config")[0].version_policy == "all"
    (tmp_path / "batching.txt").write_text(config_map["data"]["batching_parameters.txt"])
    assert BatchingOptions.from_file(tmp_path / "batching.txt").num_batch_threads == 4


def test_docker_script_is_valid_bash_and_refuses_a_missing_folder(tmp_path):
    script = SERVING / "docker-run.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    result = subprocess.run(["bash", str(script), str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1 and "models.config" in result.stderr


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_loadtest_script_runs_against_the_local_server(tmp_path, capsys, protocol):
    sys.path.insert(0, str(SERVING))
    try:
        import loadtest
    finally:
        sys.path.remove(str(SERVING))
    write_fixture_model(tmp_path / MODEL_NAME, 1)
    store = ModelStore([ModelConfig(MODEL_NAME, tmp_path / MODEL_NAME)], poll_interval_s=0)
    with ModelServer(store, rest_port=0, grpc_port=0) as server:
        where = ["--url", server.rest_url] if protocol == "rest" else ["--grpc", server.grpc_target]
        assert loadtest.main([*where, "--concurrency", "1,4", "--requests", "12"]) == 0
    out = capsys.readouterr().out
    assert "| concurrency |" in out and "| 4 | 12 | 0 |" in out


def test_tf_serving_image_is_pinned_to_the_exporting_tensorflow():
    # Issue 17: not `latest`; the release built on the TensorFlow that writes the SavedModels.
    import tensorflow as tf

    release = ".".join(tf.__version__.split(".")[:2])
    _, deployment = yaml.safe_load_all((SERVING / "k8s" / "deployment.yaml").read_text())
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    script = (SERVING / "docker-run.sh").read_text()
    for where in (image, script):
        assert "tensorflow/serving:latest" not in where
    assert image.startswith(f"tensorflow/serving:{release}.")
    assert f"tensorflow/serving:{image.split(':')[1]}" in script


def test_monitoring_config_enables_prometheus_at_tf_servings_path(tmp_path):
    from deeplense_tf.serving.config import read_monitoring_config_file

    assert read_monitoring_config_file(SERVING / "monitoring_config.txt") == \
        "/monitoring/prometheus/metrics"
    config_map, deployment = yaml.safe_load_all((SERVING / "k8s" / "deployment.yaml").read_text())
    (tmp_path / "monitoring_config.txt").write_text(config_map["data"]["monitoring_config.txt"])
    assert read_monitoring_config_file(tmp_path / "monitoring_config.txt") == \
        "/monitoring/prometheus/metrics"
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/path"] == "/monitoring/prometheus/metrics"
    assert "--monitoring_config_file=/config/monitoring_config.txt" in template["spec"]["containers"][0]["args"]
    assert "--monitoring_config_file=" in (SERVING / "docker-run.sh").read_text()


def test_readiness_probe_waits_for_a_loaded_version():
    # The model status URL family: /metadata answers only once a version is AVAILABLE.
    _, deployment = yaml.safe_load_all((SERVING / "k8s" / "deployment.yaml").read_text())
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"] == {"path": "/v1/models/deeplense/metadata", "port": "http"}


def test_serving_extra_declares_what_the_serving_code_imports():
    import ast
    import configparser
    import re

    root = Path(__file__).resolve().parents[1]
    config = configparser.ConfigParser()
    config.read(root / "setup.cfg")

    def names(text):
        return {re.split(r"[<>=!;\[ ]", line.strip())[0].lower().replace("_", "-")
                for line in text.splitlines() if line.strip() and not line.strip().startswith("#")}

    declared = names(config["options"]["install_requires"]) | names(
        config["options.extras_require"]["serving"]) | names(config["options.extras_require"]["cpu"])
    # Import name -> distribution; tensorflow-serving-api is installed --no-deps (setup.cfg note).
    distribution = {"grpc": "grpcio", "google": "protobuf", "orjson": "orjson", "numpy": "numpy",
                    "simdjson": "pysimdjson", "numba": "numba",
                    "tensorflow": "tensorflow-cpu", "yaml": "pyyaml"}
    imported = set()
    for path in (root / "deeplense_tf" / "serving").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names
                   and m not in ("deeplense_tf", "__future__", "tensorflow_serving")}
    assert third_party <= set(distribution), third_party - set(distribution)
    assert {distribution[m] for m in third_party} <= declared
    assert "tensorflow-serving-api" in (root / "setup.cfg").read_text()  # the install note
