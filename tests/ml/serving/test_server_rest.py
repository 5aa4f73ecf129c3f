"""TF Serving's REST API and the Prometheus page, on a real server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.ml.serving.conftest import (
    ModelLibrary,
    RunningServer,
    StartServer,
    install_version,
    model_config,
    predict_request,
)


@pytest.fixture
def server(models: ModelLibrary, start_server: StartServer, tmp_path) -> RunningServer:
    base = tmp_path / "hpt"
    install_version(models.half_plus_two, base, 1)
    install_version(models.half_plus_three, base, 2)
    retrieval = tmp_path / "retrieval"
    install_version(models.retrieval, retrieval, 3)
    return start_server(
        model_config(
            ("hpt", base),
            ("retrieval", retrieval),
            extra='model_version_policy { all {} } version_labels { key: "stable" value: 1 }',
        )
    )


def _call(url: str, body: object | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_rest_predict_row_and_columnar_formats(server: RunningServer):
    url = f"{server.rest_url}/v1/models/hpt"

    assert _call(f"{url}:predict", {"instances": [1.0, 2.0]}) == (200, {"predictions": [3.5, 4.0]})
    assert _call(f"{url}/versions/1:predict", {"inputs": [2.0]}) == (200, {"outputs": [3.0]})
    assert _call(f"{url}/labels/stable:predict", {"instances": [{"x": 2.0}]}) == (
        200,
        {"predictions": [3.0]},
    )
    status, body = _call(
        f"{url}:predict",
        {"signature_name": "two_inputs", "instances": [{"x": 2.0, "z": 1.0}]},
    )
    assert status == 200
    assert body == {"predictions": [{"y": 4.0, "sum": 5.0}]}


def test_rest_predict_with_strings(server: RunningServer):
    status, body = _call(
        f"{server.rest_url}/v1/models/retrieval:predict",
        {"instances": [["item-1", "item-2"]]},
    )

    assert status == 200
    (row,) = body["predictions"]
    assert len(row["item_ids"]) == 5
    assert all(item.startswith("item-") for item in row["item_ids"])
    assert row["scores"] == sorted(row["scores"], reverse=True)


def test_rest_errors_use_tf_servings_http_codes(server: RunningServer):
    url = f"{server.rest_url}/v1/models"

    assert _call(f"{url}/nope:predict", {"instances": [1.0]}) == (
        404,
        {"error": "Servable not found for request: Latest(nope)"},
    )
    assert _call(f"{url}/hpt/labels/canary:predict", {"instances": [1.0]}) == (
        400,
        {"error": "Unrecognized servable version label: canary"},
    )
    assert _call(f"{url}/hpt:predict", {"signature_name": "nope", "instances": [1.0]}) == (
        400,
        {"error": 'Serving signature key "nope" not found.'},
    )
    status, body = _call(f"{url}/hpt:predict", {"instances": ["not a number"]})
    assert status == 400
    assert "error" in body


def test_rest_status_and_metadata(server: RunningServer):
    status, body = _call(f"{server.rest_url}/v1/models/hpt")
    assert status == 200
    assert body == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK",
                                                              "error_message": ""}},
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK",
                                                              "error_message": ""}},
        ]
    }  # fmt: skip

    status, body = _call(f"{server.rest_url}/v1/models/hpt/versions/1/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "hpt", "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["x"]["dtype"] == "DT_FLOAT"

    assert _call(f"{server.rest_url}/v1/models/nope")[0] == 404


def test_metrics_count_requests_latency_and_errors_per_model_and_version(server: RunningServer):
    server.predictions.Predict(predict_request("hpt", [1.0], version=1), timeout=10)
    _call(f"{server.rest_url}/v1/models/hpt/versions/2:predict", {"instances": [1.0]})
    _call(f"{server.rest_url}/v1/models/nope:predict", {"instances": [1.0]})

    with urllib.request.urlopen(
        f"{server.rest_url}/monitoring/prometheus/metrics", timeout=10
    ) as response:
        text = response.read().decode()

    assert 'model_server_requests_total{api="predict",code="OK",model="hpt",version="1"} 1.0' in (
        text
    )
    assert 'model_server_requests_total{api="predict",code="OK",model="hpt",version="2"} 1.0' in (
        text
    )
    assert (
        'model_server_request_errors_total{api="predict",code="NOT_FOUND",model="nope",version=""}'
        in text
    )
    assert "model_server_request_latency_seconds_bucket" in text
    assert 'model_server_version_available{model="hpt",version="2"} 1.0' in text
