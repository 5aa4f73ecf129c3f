"""The real local model server for tests: in this process, on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MODEL_NAME = "recommender"


def contract_model_repository(root: Path, *, num_items: int, dim: int = 8, seed: int = 3) -> Path:
    """`root/recommender/1`: a SavedModel with the serving contract over item-0 ... item-N."""
    from ml.serving.contract_model import export_contract_model

    base = root / MODEL_NAME
    base.mkdir(parents=True, exist_ok=True)
    export_contract_model(str(base / "1"), num_items=num_items, dim=dim, seed=seed)
    return base


@contextmanager
def local_model_server(
    *, base_path: Path | None = None, config_text: str | None = None, poll_seconds: float = 0.0
) -> Iterator[str]:
    """Serve `base_path` as MODEL_NAME, or the models of a text ModelServerConfig; yields the
    gRPC target."""
    from ml.serving.server.app import ModelServer, ServerOptions
    from ml.serving.server.config import parse_config_text

    options = ServerOptions(
        port=0,
        rest_api_port=None,
        host="127.0.0.1",
        model_name=MODEL_NAME if base_path else "default",
        model_base_path=str(base_path) if base_path else "",
        file_system_poll_wait_seconds=poll_seconds,
        grpc_max_threads=16,
    )
    config = parse_config_text(config_text) if config_text is not None else None
    server = ModelServer(options, config=config).start()
    try:
        yield f"127.0.0.1:{server.grpc_port}"
    finally:
        server.stop(grace=0)
