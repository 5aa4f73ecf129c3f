"""A local model server that speaks TensorFlow Serving's gRPC and REST protocols.

Entry points: `python -m ml.serving.server` (the `tensorflow_model_server` flags), or in-process
`ModelServer(ServerOptions(...)).start()`. See docs/model-server.md.

`ModelServer` and `ServerOptions` are imported on first use, not with the package: grpc reads
`GRPC_EXPERIMENTS` once, when it is first imported, and `python -m ml.serving.server` sets it
before that (see `__main__.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ml.serving.server.app import ModelServer, ServerOptions

__all__ = ["ModelServer", "ServerOptions"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from ml.serving.server import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
