from .base import VAR_DIR
from .environment import env_int, env_str, env_target

# gRPC address of TensorFlow Serving (production) or the local model server (development).
MODEL_SERVER_TARGET = env_target("MODEL_SERVER_TARGET", "127.0.0.1:8500")
MODEL_SERVER_REST_PORT = env_int("MODEL_SERVER_REST_PORT", 8501, low=0, high=65535)
# Deadline of one model-server call, in milliseconds.
MODEL_SERVER_TIMEOUT_MS = env_int("MODEL_SERVER_TIMEOUT_MS", 50, low=1, high=60_000)
# Folder of SavedModels in TF Serving's layout: <repository>/<model name>/<version>/.
MODEL_REPOSITORY = env_str("MODEL_REPOSITORY", str(VAR_DIR / "models"))
MODEL_NAME = env_str("MODEL_NAME", "recommender")
# Daily training from stored events (beat): the hour (UTC) it runs, or -1 for never.
MODEL_TRAIN_HOUR = env_int("MODEL_TRAIN_HOUR", 3, low=-1, high=23)
