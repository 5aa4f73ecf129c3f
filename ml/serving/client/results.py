"""Typed values at the client's boundary: what leaves `ml/serving` is these, never protos."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Recommendations:
    """One ranked list, best first. `model_version` is the numeric version that answered (a
    request by label gets the version the label pointed at). Padding ("" ids) is dropped."""

    model_name: str
    model_version: int
    item_ids: tuple[str, ...]
    scores: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True, slots=True)
class TensorInfo:
    dtype: str  # TensorFlow's enum name: "DT_STRING", "DT_FLOAT", ...
    shape: tuple[int, ...] | None  # -1 for unknown sizes; None for unknown rank


@dataclass(frozen=True, slots=True)
class SignatureInfo:
    method_name: str
    inputs: Mapping[str, TensorInfo]
    outputs: Mapping[str, TensorInfo]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    model_name: str
    model_version: int
    signatures: Mapping[str, SignatureInfo]


@dataclass(frozen=True, slots=True)
class ModelVersionStatus:
    """One version as GetModelStatus reports it; `error_code` "OK" unless its load failed."""

    version: int
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error_code: str = "OK"
    error_message: str = ""

    @property
    def available(self) -> bool:
        return self.state == "AVAILABLE"


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """One entry of the server's model list, for `reload_config` and `model_config_text`.

    Version policy: `versions=(3, 4)` serves exactly those; `latest=2` the two newest;
    `all_versions` every one found; none of them is TF Serving's default, the newest only.
    `labels` map a label (`stable`, `canary`) to a version, which must be AVAILABLE on the server.
    """

    name: str
    base_path: str
    versions: tuple[int, ...] = ()
    latest: int | None = None
    all_versions: bool = False
    labels: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    platform: str = "tensorflow"

    def __post_init__(self) -> None:
        if not self.name or not self.base_path:
            raise ValueError("a model needs a name and a base_path")
        chosen = sum((bool(self.versions), self.latest is not None, self.all_versions))
        if chosen > 1:
            raise ValueError("choose one version policy: versions, latest or all_versions")
        if self.latest is not None and self.latest < 1:
            raise ValueError("latest must be at least 1")
        object.__setattr__(self, "versions", tuple(int(v) for v in self.versions))
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
