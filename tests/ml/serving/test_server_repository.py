"""The model repository: versions on disk, policies, swaps under load, labels, reloads, failures."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2

from ml.serving.server.example_models import write_warmup_requests
from ml.serving.server.manager import AVAILABLE, END
from tests.ml.serving.conftest import (
    DEADLINE,
    RunningServer,
    install_version,
    model_config,
    parse_config,
    predict_request,
    rpc_error,
    wait_for,
)


def _served_version(server: RunningServer, name: str = "hpt") -> int:
    response = server.predictions.Predict(predict_request(name, [0.0]), timeout=DEADLINE)
    return response.model_spec.version.value


def _status(server: RunningServer, name: str, version: int | None = None):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    return server.models.GetModelStatus(request, timeout=DEADLINE)


def _load_error(server: RunningServer, name: str, version: int) -> str:
    """The error of a version's last load, or '' while the server has not seen the version."""
    try:
        return _status(server, name, version).model_version_status[0].status.error_message
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return ""
        raise


def test_version_folders_are_numbers_and_other_children_are_ignored(models, start_server, tmp_path):
    base = tmp_path / "hpt"
    install_version(models.half_plus_two, base, "00000123")
    install_version(models.half_plus_three, base, "latest-export")
    (base / "README").write_text("not a version")

    server = start_server(model_config(("hpt", base)))

    assert _served_version(server) == 123
    assert server.statuses("hpt") == {123: AVAILABLE}


def test_startup_waits_until_every_version_is_available(models, start_server, tmp_path):
    base = tmp_path / "hpt"
    for version in (1, 2, 3):
        install_version(models.half_plus_two, base, version)

    server = start_server(model_config(("hpt", base), extra="model_version_policy { all {} }"))

    # no waiting: start() returned only once all three were AVAILABLE
    assert server.statuses("hpt") == {3: AVAILABLE, 2: AVAILABLE, 1: AVAILABLE}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("", {3}),
        ("model_version_policy { latest { num_versions: 2 } }", {2, 3}),
        ("model_version_policy { all {} }", {1, 2, 3}),
        ("model_version_policy { specific { versions: 1 versions: 3 } }", {1, 3}),
    ],
    ids=["default-latest-1", "latest-2", "all", "specific"],
)
def test_version_policies_choose_what_is_served(models, start_server, tmp_path, policy, expected):
    base = tmp_path / "hpt"
    for version in (1, 2, 3):
        install_version(models.half_plus_two, base, version)

    server = start_server(model_config(("hpt", base), extra=policy))

    statuses = server.statuses("hpt")
    assert {v for v, state in statuses.items() if state == AVAILABLE} == expected


def test_status_lists_versions_newest_first_with_not_found_messages(models, start_server, tmp_path):
    base = tmp_path / "hpt"
    install_version(models.half_plus_two, base, 1)
    install_version(models.half_plus_three, base, 2)
    server = start_server(model_config(("hpt", base), extra="model_version_policy { all {} }"))

    response = _status(server, "hpt")
    one = _status(server, "hpt", version=1)
    missing_version = rpc_error(lambda: _status(server, "hpt", version=9))
    missing_model = rpc_error(lambda: _status(server, "nope"))

    assert [s.version for s in response.model_version_status] == [2, 1]
    assert [s.version for s in one.model_version_status] == [1]
    assert one.model_version_status[0].status.error_code == 0
    assert missing_version.code() == grpc.StatusCode.NOT_FOUND
    assert missing_version.details() == "Could not find version 9 of model hpt"
    assert missing_model.code() == grpc.StatusCode.NOT_FOUND
    assert missing_model.details() == "Could not find any versions of model nope"


def test_a_new_version_swaps_in_with_zero_failed_requests(models, start_server, tmp_path):
    # given: version 1 serving, clients sending requests continuously
    base = tmp_path / "hpt"
    install_version(models.half_plus_two, base, 1)
    server = start_server(model_config(("hpt", base)))
    failures: list[str] = []
    seen_versions: set[int] = set()
    answered = [0]
    stop = threading.Event()

    def client() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                seen_versions.add(_served_version(server))
                answered[0] += 1
            except grpc.RpcError as error:
                failures.append(f"{error.code()}: {error.details()}")

    clients = [threading.Thread(target=client) for _ in range(3)]
    for thread in clients:
        thread.start()
    try:
        wait_for(lambda: answered[0] > 20, what="requests before the swap")

        # when: version 2 appears (complete), then version 1 disappears
        install_version(models.half_plus_three, base, 2)
        wait_for(lambda: server.statuses("hpt") == {2: AVAILABLE, 1: END}, what="swap to 2")
        before = answered[0]
        wait_for(lambda: answered[0] > before + 20, what="requests after the swap")
    finally:
        stop.set()
        for thread in clients:
            thread.join()

    # then
    assert failures == []
    assert seen_versions == {1, 2}
    assert _served_version(server) == 2


def test_removing_the_newest_version_falls_back_to_the_previous_one(models, start_server, tmp_path):
    base = tmp_path / "hpt"
    install_version(models.half_plus_two, base, 1)
    install_version(models.half_plus_three, base, 2)
    server = start_server(model_config(("hpt", base)))
    assert _served_version(server) == 2

    shutil.rmtree(base / "2")

    wait_for(lambda: server.statuses("hpt") == {2: END, 1: AVAILABLE}, what="fallback to 1")
    assert _served_version(server) == 1


def test_a_corrupt_version_is_reported_and_the_old_one_keeps_serving(
    models, start_server, tmp_path
):
    base = tmp_path / "hpt"
    install_version(models.half_plus_two, base, 1)
    server = start_server(model_config(("hpt", base)), max_num_load_retries=0)

    # a version whose saved_model.pb is garbage
    broken = tmp_path / "broken"
    shutil.copytree(models.half_plus_two, broken)
    (broken / "saved_model.pb").write_bytes(b"\x00 not a protobuf \xff" * 10)
    broken.rename(base / "2")

    wait_for(lambda: _load_error(server, "hpt", 2), what="the failed load")
    status = _status(server, "hpt", version=2).model_version_status[0]
    assert status.state == END
    assert status.status.error_code != 0
    assert status.status.error_message
    assert _served_version(server) == 1
    assert server.statuses("hpt")[1] == AVAILABLE


def test_a_half_written_version_fails_then_loads_once_complete(models, start_server, tmp_path):
    base = tmp_path / "hpt"
    install_version(models.half_plus_two, base, 1)
    server = start_server(model_config(("hpt", base)), max_num_load_retries=1000)

    # when: a copy lands in place without its saved_model.pb (not renamed into place)
    (base / "2").mkdir()
    shutil.copytree(models.half_plus_three / "variables", base / "2" / "variables")
    wait_for(lambda: _load_error(server, "hpt", 2), what="the failed load")
    assert _served_version(server) == 1

    # then: once the file arrives, a retry loads it and version 2 takes over
    shutil.copy(models.half_plus_three / "saved_model.pb", base / "2" / "saved_model.pb")
    wait_for(lambda: server.statuses("hpt") == {2: AVAILABLE, 1: END}, what="version 2")
    assert _served_version(server) == 2


def test_labels_point_at_available_versions_and_follow_a_canary_flow(
    models, start_server, tmp_path
):
    base = tmp_path / "hpt"
    install_version(models.half_plus_two, base, 1)
    install_version(models.half_plus_three, base, 2)
    policy = "model_version_policy { specific { versions: 1 versions: 2 } } "
    server = start_server(
        model_config(
            ("hpt", base),
            extra=policy + 'version_labels { key: "stable" value: 1 } '
            'version_labels { key: "canary" value: 2 }',
        )
    )

    def version_for(label: str) -> int:
        request = predict_request("hpt", [0.0], label=label)
        return server.predictions.Predict(request, timeout=DEADLINE).model_spec.version.value

    assert (version_for("stable"), version_for("canary")) == (1, 2)

    # promote: stable moves to 2, then version 1 is dropped
    promote = model_management_pb2.ReloadConfigRequest(
        config=parse_config(
            model_config(("hpt", base), extra=policy + 'version_labels { key: "stable" value: 2 }')
        )
    )
    server.models.HandleReloadConfigRequest(promote, timeout=30)
    assert version_for("stable") == 2
    drop = model_management_pb2.ReloadConfigRequest(
        config=parse_config(
            model_config(
                ("hpt", base),
                extra="model_version_policy { specific { versions: 2 } } "
                'version_labels { key: "stable" value: 2 }',
            )
        )
    )
    server.models.HandleReloadConfigRequest(drop, timeout=30)
    assert server.statuses("hpt") == {2: AVAILABLE, 1: END}
    assert version_for("stable") == 2
    assert rpc_error(lambda: version_for("canary")).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_label_on_an_unavailable_version_is_refused_and_nothing_changes(
    models, start_server, tmp_path
):
    base = tmp_path / "hpt"
    install_version(models.half_plus_two, base, 1)
    server = start_server(
        model_config(("hpt", base), extra='version_labels { key: "stable" value: 1 }')
    )
    bad = model_management_pb2.ReloadConfigRequest(
        config=parse_config(
            model_config(("hpt", base), extra='version_labels { key: "stable" value: 42 }')
        )
    )

    error = rpc_error(lambda: server.models.HandleReloadConfigRequest(bad, timeout=30))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == (
        "Request to assign label to version 42 of model hpt, which is not currently available "
        "for inference"
    )
    request = predict_request("hpt", [0.0], label="stable")
    assert server.predictions.Predict(request, timeout=DEADLINE).model_spec.version.value == 1


def test_allow_version_labels_for_unavailable_models_accepts_new_labels(
    models, start_server, tmp_path
):
    base = tmp_path / "hpt"
    install_version(models.half_plus_two, base, 1)
    server = start_server(
        model_config(("hpt", base), extra='version_labels { key: "next" value: 2 }'),
        allow_version_labels_for_unavailable_models=True,
    )

    error = rpc_error(
        lambda: server.predictions.Predict(
            predict_request("hpt", [0.0], label="next"), timeout=DEADLINE
        )
    )

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "Servable not found for request: Specific(hpt, 2)"


def test_reload_config_adds_and_removes_models(models, start_server, tmp_path):
    hpt = tmp_path / "hpt"
    install_version(models.half_plus_two, hpt, 1)
    retrieval = tmp_path / "retrieval"
    install_version(models.retrieval, retrieval, 1)
    server = start_server(model_config(("hpt", hpt)))

    request = model_management_pb2.ReloadConfigRequest(
        config=parse_config(model_config(("retrieval", retrieval)))
    )
    response = server.models.HandleReloadConfigRequest(request, timeout=30)

    # returns once the new model is AVAILABLE; the omitted one is unloaded
    assert response.status.error_code == 0
    assert server.statuses("retrieval") == {1: AVAILABLE}
    assert server.statuses("hpt") == {1: END}
    error = rpc_error(lambda: _served_version(server, "hpt"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_reload_config_with_a_failing_model_answers_an_error(models, start_server, tmp_path):
    hpt = tmp_path / "hpt"
    install_version(models.half_plus_two, hpt, 1)
    broken = tmp_path / "broken"
    (broken / "1").mkdir(parents=True)
    server = start_server(model_config(("hpt", hpt)), max_num_load_retries=0)

    request = model_management_pb2.ReloadConfigRequest(
        config=parse_config(model_config(("hpt", hpt), ("broken", broken)))
    )
    error = rpc_error(lambda: server.models.HandleReloadConfigRequest(request, timeout=30))

    assert error.code() == grpc.StatusCode.UNKNOWN
    assert "did not become available" in error.details()
    assert _served_version(server) == 1
    assert server.statuses("broken") == {1: END}


def test_config_file_polling_applies_changes_and_survives_a_malformed_file(
    models, start_server, tmp_path, caplog
):
    hpt = tmp_path / "hpt"
    install_version(models.half_plus_two, hpt, 1)
    retrieval = tmp_path / "retrieval"
    install_version(models.retrieval, retrieval, 1)
    config_file = tmp_path / "models.config"
    config_file.write_text(model_config(("hpt", hpt)))
    server = start_server(
        model_config_file=str(config_file), model_config_file_poll_wait_seconds=0.05
    )

    # a malformed file: logged, the current models keep serving
    config_file.write_text("model_config_list { config { name: ")
    wait_for(
        lambda: "Error parsing text-format tensorflow.serving.ModelServerConfig" in caplog.text,
        what="the parse error in the log",
    )
    assert _served_version(server) == 1

    # a good file again: applied
    config_file.write_text(model_config(("hpt", hpt), ("retrieval", retrieval)))
    wait_for(lambda: server.statuses("retrieval") == {1: AVAILABLE}, what="the new model")


def test_warmup_requests_are_replayed_before_the_version_is_available(
    models, start_server, tmp_path
):
    base = tmp_path / "hpt"
    good = install_version(models.half_plus_two, tmp_path / "staging", 1)
    write_warmup_requests(str(good), [predict_request("hpt", [1.0])] * 3)
    shutil.move(str(good), base / "1")
    server = start_server(model_config(("hpt", base)), max_num_load_retries=0)
    assert server.server.metrics.loads.labels("hpt", "1", "ok")._value.get() == 1

    # a warmup file whose request cannot run fails the load of that version
    bad = install_version(models.half_plus_three, tmp_path / "staging", 2)
    write_warmup_requests(str(bad), [predict_request("hpt", [1.0], signature="nope")])
    shutil.move(str(bad), base / "2")

    message = wait_for(lambda: _load_error(server, "hpt", 2), what="the failed warmup")
    assert 'Serving signature key "nope" not found.' in message
    assert _served_version(server) == 1


def test_a_missing_base_path_is_logged_and_a_version_appearing_later_is_served(
    models, start_server, tmp_path
):
    base: Path = tmp_path / "later"
    server = start_server(model_config(("later", base)))
    assert server.statuses("later") == {}

    install_version(models.half_plus_two, base, 4)

    wait_for(lambda: server.statuses("later") == {4: AVAILABLE}, what="version 4")
    assert _served_version(server, "later") == 4


def test_start_up_with_a_corrupt_model_and_a_bad_label_serves_the_rest(
    models, start_server, tmp_path, caplog
):
    # given: one good model, one whose only version is corrupt, a label on a missing version
    good = tmp_path / "hpt"
    install_version(models.half_plus_two, good, 1)
    bad = tmp_path / "bad" / "1"
    shutil.copytree(models.half_plus_two, bad)
    (bad / "saved_model.pb").write_bytes(b"garbage")

    # when
    server = start_server(
        model_config(("hpt", good), ("bad", tmp_path / "bad"),
                     extra='version_labels { key: "stable" value: 9 }'),
        max_num_load_retries=0,
    )  # fmt: skip

    # then: the server is up, the good model serves, the failures are reported
    assert _served_version(server) == 1
    assert _load_error(server, "bad", 1)
    assert "did not become available" in caplog.text
    assert "Request to assign label to version 9 of model hpt" in caplog.text
    error = rpc_error(
        lambda: server.predictions.Predict(
            predict_request("hpt", [0.0], label="stable"), timeout=DEADLINE
        )
    )
    assert error.details() == "Unrecognized servable version label: stable"
