"""Push and validate: a valid SavedModel becomes the next numbered version in the repository;
a hostile archive, a wrong signature, a model that does not load or a worse model is refused
with a clear reason, the repository untouched."""

from __future__ import annotations

import io
import tarfile
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from core.registry.models import AuditEntry, ModelVersion, VersionStatus
from core.registry.services import model_version_deploy, model_version_validate

from .helpers import push_and_validate, shoppers_who_buy_pairs

pytestmark = pytest.mark.django_db


def _post_archive(client, path: Path, name: str = "recommender", **query):
    with open(path, "rb") as stream:
        return client.post(
            f"/api/v1/models/{name}/versions" + ("?force=true" if query.get("force") else ""),
            {"archive": stream},
            format="multipart",
        )


def _numbered_folders(repository: Path, name: str = "recommender") -> list[str]:
    folder = repository / name
    return sorted(p.name for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def test_push_over_the_api_validates_and_places_the_next_version(
    make_client, repository, archives, django_capture_on_commit_callbacks
):
    client = make_client("models:write")
    # when
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _post_archive(client, archives["good"])
    # then: accepted, validation enqueued after commit
    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["status"] == "uploaded" and body["number"] is None
    assert len(body["checksum"]) == 64
    assert response["Location"] == f"/api/v1/models/recommender/pushes/{body['id']}"
    assert len(callbacks) == 1
    # when the worker validates it
    version = model_version_validate(version_id=body["id"])
    # then
    assert version.status == VersionStatus.READY, version.status_reason
    assert version.number == 1
    assert _numbered_folders(repository) == ["1"]
    assert (repository / "recommender" / "1" / "saved_model.pb").is_file()
    assert not any(p.name.startswith(".") for p in (repository / "recommender").iterdir())
    assert client.get("/api/v1/models/recommender/versions/1").json()["status"] == "ready"
    assert client.get(body["url"]).json()["number"] == 1
    assert list(Path(repository.parent / "uploads").iterdir()) == []
    actions = list(AuditEntry.objects.order_by("id").values_list("action", flat=True))
    assert actions == ["push", "validated"]
    # a second push gets the next number
    assert push_and_validate(archives["other"]).number == 2
    assert _numbered_folders(repository) == ["1", "2"]


def test_push_needs_the_models_scope_and_an_archive(make_client, repository, archives):
    assert _post_archive(make_client("events:write"), archives["good"]).status_code == 403
    client = make_client("models:write")
    response = client.post("/api/v1/models/recommender/versions", {}, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert _post_archive(client, archives["good"], name="bad name!").status_code == 400


def test_a_raw_body_push_works_and_an_oversize_one_is_refused(
    make_client, repository, archives, settings
):
    client = make_client("models:write")
    data = archives["good"].read_bytes()
    response = client.post(
        "/api/v1/models/recommender/versions", data, content_type="application/gzip"
    )
    assert response.status_code == 202, response.json()
    settings.REGISTRY_MAX_ARCHIVE_BYTES = 1024
    response = client.post(
        "/api/v1/models/recommender/versions", data, content_type="application/gzip"
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert ModelVersion.objects.count() == 1


def _archive_with(tmp_path: Path, source: Path, extra: tarfile.TarInfo, data: bytes | None):
    path = tmp_path / "hostile.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        archive.add(source, arcname=".")
        if data is None:
            archive.addfile(extra)
        else:
            extra.size = len(data)
            archive.addfile(extra, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    ("member", "link", "reason"),
    [
        ("../../escaped", None, "'..'"),
        ("/tmp/absolute-escape", None, "absolute path"),
        ("variables/evil", "/etc/passwd", "links are not allowed"),
    ],
)
def test_hostile_archives_fail_with_the_reason_and_touch_nothing(
    repository, exported, tmp_path, member, link, reason
):
    info = tarfile.TarInfo(member)
    if link:
        info.type = tarfile.SYMTYPE
        info.linkname = link
    archive = _archive_with(tmp_path, exported.good, info, None if link else b"x")
    version = push_and_validate(archive)
    assert version.status == VersionStatus.FAILED
    assert reason in version.status_reason
    assert version.number is None
    assert _numbered_folders(repository) == []
    assert not (tmp_path / "escaped").exists()
    assert list((repository / "recommender").iterdir()) == []  # staging removed


def test_corrupt_archive_fails_cleanly(repository, tmp_path):
    archive = tmp_path / "corrupt.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00" + b"\xff" * 500)
    version = push_and_validate(archive)
    assert version.status == VersionStatus.FAILED
    assert "corrupt" in version.status_reason or "not a tar" in version.status_reason


def test_wrong_signature_fails_with_the_contract_problems(repository, archives):
    version = push_and_validate(archives["wrong_signature"])
    assert version.status == VersionStatus.FAILED
    assert version.status_reason.startswith("serving contract:")
    assert "signature 'recommend' is missing" in version.status_reason
    assert _numbered_folders(repository) == []


def test_a_model_whose_variables_are_broken_fails_to_load(repository, exported, tmp_path):
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(exported.good, broken)
    for path in (broken / "variables").iterdir():
        path.write_bytes(b"garbage")
    from core.registry.archives import pack_saved_model

    version = push_and_validate(pack_saved_model(broken, tmp_path / "broken.tar.gz"))
    assert version.status == VersionStatus.FAILED
    assert "does not load" in version.status_reason or "smoke" in version.status_reason


def test_validation_runs_once_even_if_delivered_twice(repository, archives):
    version = push_and_validate(archives["good"])
    again = model_version_validate(version_id=version.pk)
    assert again.number == 1 and again.status == VersionStatus.READY
    assert _numbered_folders(repository) == ["1"]


@pytest.mark.django_db(transaction=True)
def test_two_pushes_validated_at_once_get_distinct_numbers(repository, archives):
    # given two uploaded versions
    from core.registry.services import model_version_push

    ids = []
    for name in ("good", "other"):
        with open(archives[name], "rb") as stream:
            ids.append(model_version_push(name="recommender", archive=stream, pushed_by="t").pk)
    results: dict[int, ModelVersion] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def validate(version_id: int) -> None:
        try:
            barrier.wait()
            results[version_id] = model_version_validate(version_id=version_id)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=validate, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    # then
    assert not errors
    assert sorted(v.number for v in results.values()) == [1, 2]
    assert all(v.status == VersionStatus.READY for v in results.values())
    assert _numbered_folders(repository) == ["1", "2"]


def test_numbers_skip_folders_exported_outside_the_registry(repository, archives, exported):
    import shutil

    shutil.copytree(exported.other, repository / "recommender" / "5")
    assert push_and_validate(archives["good"]).number == 6


def test_push_model_command(repository, exported, archives, capsys):
    call_command("push_model", str(exported.good), "--name", "recommender")
    assert "version 1 of recommender is ready" in capsys.readouterr().out
    with pytest.raises(CommandError, match="serving contract"):
        call_command("push_model", str(archives["wrong_signature"]), "--name", "recommender")
    assert ModelVersion.objects.filter(status=VersionStatus.FAILED).count() == 1


def test_offline_gate_refuses_a_worse_challenger_unless_forced(
    repository, archives, model_server, settings
):
    # given a good stable version and recent shoppers
    settings.REGISTRY_EVAL_MIN_USERS = 10
    shoppers_who_buy_pairs(60)
    stable = push_and_validate(archives["good"])
    assert stable.offline_metrics["gate"] == "passed"
    assert stable.offline_metrics["challenger"]["hr@10"] > 0.9
    model_version_deploy(name="recommender", number=stable.number, mode="stable", actor="t")
    # when a random model is pushed
    worse = push_and_validate(archives["other"])
    # then it is refused, with both figures in the reason
    assert worse.status == VersionStatus.FAILED
    assert worse.status_reason.startswith("offline gate: HR@10")
    assert "push with force to override" in worse.status_reason
    assert _numbered_folders(repository) == ["1"]
    # unless forced
    forced = push_and_validate(archives["other"], force=True)
    assert forced.status == VersionStatus.READY
    assert forced.offline_metrics["gate"] == "forced"
    assert forced.offline_metrics["stable"]["version"] == 1


def test_a_trained_version_is_registered_ready(repository, settings):
    from core.registry.services import model_train

    shoppers_who_buy_pairs(60)
    outcome = model_train(evaluate=False, tune=False)
    version = ModelVersion.objects.get(number=outcome.version)
    assert version.status == VersionStatus.READY, version.status_reason
    assert version.source == "train" and version.pushed_by == "train_model"
    assert version.model_card  # read from assets.extra/model_card.json
    assert _numbered_folders(repository) == [str(outcome.version)]


def test_the_sweep_fails_an_interrupted_validation(repository, archives):
    from core.registry.services import model_version_push, registry_sweep

    with open(archives["good"], "rb") as stream:
        version = model_version_push(name="recommender", archive=stream, pushed_by="t")
    ModelVersion.objects.filter(pk=version.pk).update(
        status=VersionStatus.VALIDATING, updated_at=timezone.now() - timedelta(hours=2)
    )
    result = registry_sweep(older_than=timedelta(hours=1))
    version.refresh_from_db()
    assert result["failed"] == 1
    assert version.status == VersionStatus.FAILED and "interrupted" in version.status_reason
