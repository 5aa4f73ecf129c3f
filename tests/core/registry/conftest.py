"""SavedModels exported once per session (two contract models, a wrong-signature one), a model
repository per test, and a real local model server (in this process, on a free port) that starts
with an empty model list: the registry's deployments are what make it serve."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from core.catalog.models import Item
from core.recommendations import model_gateway
from core.registry import arm_stats
from core.registry.archives import pack_saved_model
from core.registry.selectors import serving_plan_cache_clear

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NUM_ITEMS = 40


@dataclass(frozen=True)
class Exported:
    good: Path  # item 2j and 2j+1 share a direction: "bought together" pairs
    other: Path  # random embeddings (another seed)
    third: Path  # random embeddings (a third seed)
    wrong_signature: Path  # a plain TF model: serving_default(x: float) -> y


def _export_paired(path: Path) -> Path:
    from ml.serving.contract_model import export_contract_model

    rng = np.random.default_rng(7)
    base = rng.normal(size=(NUM_ITEMS // 2, 16)).astype(np.float32)
    embeddings = np.repeat(base, 2, axis=0) + rng.normal(scale=0.01, size=(NUM_ITEMS, 16))
    embeddings = (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype(np.float32)
    item_ids = [f"item-{i}" for i in range(NUM_ITEMS)]
    return Path(export_contract_model(str(path), item_ids=item_ids, embeddings=embeddings))


def _export_wrong_signature(path: Path) -> Path:
    import tensorflow as tf

    class Plain(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x * 2.0}

    module = Plain()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Exported:
    from ml.serving.contract_model import export_contract_model

    root = tmp_path_factory.mktemp("registry-models")
    return Exported(
        good=_export_paired(root / "good"),
        other=Path(export_contract_model(str(root / "other"), num_items=NUM_ITEMS, seed=11)),
        third=Path(export_contract_model(str(root / "third"), num_items=NUM_ITEMS, seed=12)),
        wrong_signature=_export_wrong_signature(root / "wrong"),
    )


@pytest.fixture(scope="session")
def archives(exported, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("registry-archives")
    return {
        name: pack_saved_model(getattr(exported, name), root / f"{name}.tar.gz")
        for name in ("good", "other", "third", "wrong_signature")
    }


@pytest.fixture
def repository(settings, tmp_path) -> Path:
    repository = tmp_path / "models"
    repository.mkdir()
    settings.MODEL_REPOSITORY = str(repository)
    settings.MODEL_NAME = "recommender"
    settings.REGISTRY_UPLOAD_DIR = str(tmp_path / "uploads")
    settings.REGISTRY_MODEL_CONFIG_FILE = str(repository / "models.config")
    settings.REGISTRY_DEPLOY_TIMEOUT_SECONDS = 60.0
    settings.REGISTRY_ASSIGNMENT_TTL_SECONDS = 0.0
    serving_plan_cache_clear()
    yield repository
    serving_plan_cache_clear()


@pytest.fixture
def model_server(settings, repository):
    """A local model server with no models yet; the serving path's client points at it."""
    from ml.serving.server.app import ModelServer, ServerOptions
    from ml.serving.server.config import parse_config_text

    server = ModelServer(
        ServerOptions(
            port=0,
            rest_api_port=None,
            host="127.0.0.1",
            file_system_poll_wait_seconds=0.05,
            grpc_max_threads=16,
        ),
        config=parse_config_text("model_config_list {}"),
    ).start()
    settings.MODEL_SERVER_TARGET = f"127.0.0.1:{server.grpc_port}"
    settings.MODEL_SERVER_TIMEOUT_MS = 5000
    settings.RECOMMENDATIONS_BUDGET_MS = 5000
    settings.RECOMMENDATIONS_MAX_PER_CATEGORY = 0
    model_gateway.reset_client()
    yield server
    model_gateway.reset_client()
    server.stop(grace=0)


@pytest.fixture
def catalog(db):
    now = datetime.now(UTC)
    Item.objects.bulk_create(
        Item(
            external_id=f"item-{i}",
            title=f"Item {i}",
            category="books" if i < 20 else "toys",
            created_at=now,
            updated_at=now,
        )
        for i in range(NUM_ITEMS)
    )


@pytest.fixture(autouse=True)
def _fresh_counters():
    arm_stats.flush()
    yield
    arm_stats.flush()


def copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
