"""A local model server that speaks TensorFlow Serving's gRPC and REST protocols.

Entry points: `python -m ml.serving.server` (the `tensorflow_model_server` flags), or in-process
`ModelServer(ServerOptions(...)).start()`. See docs/model-server.md.
"""

from ml.serving.server.app import ModelServer, ServerOptions

__all__ = ["ModelServer", "ServerOptions"]
