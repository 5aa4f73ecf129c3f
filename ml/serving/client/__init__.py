"""The gRPC client to TF Serving (and to the local model server, which speaks the same protocol).

The only code in the project that talks to the model server. Importing it loads grpc and
protobuf, never TensorFlow's runtime (see `protos.py`), so it belongs in web workers.

    from ml.serving.client import PredictionClient, ModelServerUnavailable

    client = PredictionClient("model-server:8500", timeout=0.05)
    try:
        result = client.recommend(["item-1", "item-7"], k=20, label="stable")
    except ModelServerUnavailable:
        ...  # fallback
"""

from ml.serving.client.config import model_config_text, model_server_config
from ml.serving.client.errors import (
    CircuitOpen,
    ModelNotFound,
    ModelResponseError,
    ModelServerError,
    ModelServerUnavailable,
)
from ml.serving.client.prediction_client import (
    DEFAULT_MODEL,
    DEFAULT_TARGET,
    PredictionClient,
)
from ml.serving.client.results import (
    ModelConfig,
    ModelMetadata,
    ModelVersionStatus,
    Recommendations,
    SignatureInfo,
    TensorInfo,
)

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TARGET",
    "CircuitOpen",
    "ModelConfig",
    "ModelMetadata",
    "ModelNotFound",
    "ModelResponseError",
    "ModelServerError",
    "ModelServerUnavailable",
    "ModelVersionStatus",
    "PredictionClient",
    "Recommendations",
    "SignatureInfo",
    "TensorInfo",
    "model_config_text",
    "model_server_config",
]
