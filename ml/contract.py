"""The serving contract of an exported recommendation model, and a check for it.

The local model server, the serving client and the model registry rely on these names and dtypes;
``check_signatures`` reads ``saved_model.pb`` only (no TensorFlow graph is loaded, no variables),
so the registry can call it cheaply on every push.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RECOMMEND = "recommend"
SIMILAR = "similar"
DEFAULT_SIGNATURE = "serving_default"  # the same function as RECOMMEND
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MODEL_CARD_FILE = "assets.extra/model_card.json"


@dataclass(frozen=True)
class TensorContract:
    dtype: str  # TF DataType enum name, e.g. "DT_STRING"
    rank: int  # -1 = any, 0 = scalar


SIGNATURES: dict[str, tuple[dict[str, TensorContract], dict[str, TensorContract]]] = {
    RECOMMEND: (
        {
            "history": TensorContract("DT_STRING", 2),
            "history_weights": TensorContract("DT_FLOAT", 2),
            "k": TensorContract("DT_INT32", 0),
        },
        {"item_ids": TensorContract("DT_STRING", 2), "scores": TensorContract("DT_FLOAT", 2)},
    ),
    SIMILAR: (
        {"item_ids": TensorContract("DT_STRING", 1), "k": TensorContract("DT_INT32", 0)},
        {"item_ids": TensorContract("DT_STRING", 2), "scores": TensorContract("DT_FLOAT", 2)},
    ),
}
SIGNATURES[DEFAULT_SIGNATURE] = SIGNATURES[RECOMMEND]


def check_signatures(saved_model_dir: str | Path) -> list[str]:
    """Problems with the SavedModel's signatures (empty list: the contract holds)."""
    path = Path(saved_model_dir) / "saved_model.pb"
    if not path.is_file():
        return [f"{path}: missing (not a SavedModel directory)"]
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(path.read_bytes())
    except Exception as error:  # a corrupt file is a finding, not a crash
        return [f"{path}: cannot be parsed ({error})"]
    serving = [g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags]
    if not serving:
        return [f"{path}: no meta graph tagged 'serve'"]
    signatures = serving[0].signature_def
    problems: list[str] = []
    for name, (inputs, outputs) in SIGNATURES.items():
        if name not in signatures:
            problems.append(f"signature {name!r} is missing")
            continue
        signature = signatures[name]
        for kind, expected, actual in (
            ("input", inputs, signature.inputs),
            ("output", outputs, signature.outputs),
        ):
            missing = sorted(set(expected) - set(actual))
            extra = sorted(set(actual) - set(expected))
            if missing:
                problems.append(f"{name}: missing {kind}(s) {', '.join(missing)}")
            if extra:
                problems.append(f"{name}: unexpected {kind}(s) {', '.join(extra)}")
            for alias in sorted(set(expected) & set(actual)):
                tensor = actual[alias]
                dtype = types_pb2.DataType.Name(tensor.dtype)
                if dtype != expected[alias].dtype:
                    problems.append(
                        f"{name}: {kind} {alias} is {dtype}, expected {expected[alias].dtype}"
                    )
                rank = -1 if tensor.tensor_shape.unknown_rank else len(tensor.tensor_shape.dim)
                if expected[alias].rank >= 0 and rank not in (-1, expected[alias].rank):
                    problems.append(
                        f"{name}: {kind} {alias} has rank {rank}, expected {expected[alias].rank}"
                    )
    return problems


def check_version_dir(version_dir: str | Path) -> list[str]:
    """``check_signatures`` plus the files every version carries (warmup requests, model card)."""
    version_dir = Path(version_dir)
    problems = check_signatures(version_dir)
    for relative in (WARMUP_FILE, MODEL_CARD_FILE):
        if not (version_dir / relative).is_file():
            problems.append(f"{relative} is missing")
    return problems
