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
