"""TF Serving's message classes without TensorFlow's runtime.

`tensorflow_serving.apis.predict_pb2` imports `tensorflow.core.framework.tensor_pb2`, and importing
any `tensorflow.*` module runs `tensorflow/__init__.py` first: about 3 s and 550 MB to build a
request. The generated `*_pb2.py` files themselves only need `google.protobuf`.

So this module executes the installed `*_pb2.py` files of `tensorflow` and `tensorflow_serving`
directly, with an `__import__` that resolves their `from tensorflow... import x_pb2` lines to the
same private loader instead of the real packages. Nothing is added to `sys.modules` under a
`tensorflow` name, so a later `import tensorflow` (a Celery worker that also trains, a test
process) runs TensorFlow's real init. That later import is safe: the descriptors we added are the
very bytes TensorFlow's copies add, protobuf ignores an identical re-add of a file, and
`GetMessageClass` returns the class already built for a descriptor. The message classes are
therefore *the same objects* whichever side loads first (a test asserts it), and the wire format
and full names (`tensorflow.serving.PredictRequest`) are TF Serving's by construction.

If TensorFlow's modules are already imported, they are used as they are.
"""

from __future__ import annotations

import builtins
import importlib.util
import os
import sys
import threading
import types
from importlib.machinery import SourceFileLoader
from typing import Any

_TOP_LEVEL = ("tensorflow", "tensorflow_serving")


def _package_roots() -> dict[str, list[str]]:
    """Folders of the installed top-level packages; `find_spec` of a top-level name runs nothing."""
    roots: dict[str, list[str]] = {}
    for top in _TOP_LEVEL:
        spec = importlib.util.find_spec(top) if top not in sys.modules else None
        if spec is not None and spec.submodule_search_locations:
            roots[top] = list(spec.submodule_search_locations)
        elif top in sys.modules:
            roots[top] = list(getattr(sys.modules[top], "__path__", []))
        else:
            roots[top] = []
    return roots


_ROOTS = _package_roots()
_loaded: dict[str, types.ModuleType] = {}
_lock = threading.RLock()


def _source_file(name: str) -> str | None:
    top, *rest = name.split(".")
    for root in _ROOTS.get(top, ()):
        path = os.path.join(root, *rest) + ".py"
        if os.path.isfile(path):
            return path
    return None


def load_proto_module(name: str) -> types.ModuleType:
    """The module `name` (e.g. `tensorflow_serving.apis.predict_pb2`), without TensorFlow's init.

    Returns the real module when it is already imported.
    """
    real = sys.modules.get(name)
    if real is not None:
        return real
    with _lock:
        module = _loaded.get(name)
        if module is not None:
            return module
        path = _source_file(name)
        if path is None:
            raise ImportError(
                f"{name}: no source file in the installed tensorflow / tensorflow-serving-api "
                f"packages ({_ROOTS})",
                name=name,
            )
        code = SourceFileLoader(name, path).get_code(name)
        if code is None:
            raise ImportError(f"{name}: no code in {path}", name=name)
        module = types.ModuleType(name)
        module.__file__ = path
        module.__builtins__ = _PRIVATE_BUILTINS  # type: ignore[attr-defined]
        _loaded[name] = module
        try:
            exec(code, module.__dict__)  # noqa: S102 - installed generated code, see the docstring
        except BaseException:
            del _loaded[name]
            raise
        return module


def _private_import(
    name: str,
    globals: dict[str, Any] | None = None,
    locals: dict[str, Any] | None = None,
    fromlist: tuple[str, ...] | list[str] | None = (),
    level: int = 0,
) -> Any:
    """`__import__` for the generated files: `from tensorflow.x import y_pb2` -> our loader."""
    if level == 0 and name.split(".", 1)[0] in _TOP_LEVEL:
        if _source_file(name) is not None:  # `from tensorflow.x.y_pb2 import *`
            return load_proto_module(name)
        if not fromlist:
            raise ImportError(f"plain `import {name}` is not supported here", name=name)
        package = types.SimpleNamespace()
        for item in fromlist:
            setattr(package, item, load_proto_module(f"{name}.{item}"))
        return package
    return builtins.__import__(name, globals, locals, fromlist or (), level)


_PRIVATE_BUILTINS = dict(builtins.__dict__, __import__=_private_import)

# What the client needs, loaded once at import (about 30 ms, most of it meta_graph's closure).
types_pb2 = load_proto_module("tensorflow.core.framework.types_pb2")
tensor_pb2 = load_proto_module("tensorflow.core.framework.tensor_pb2")
meta_graph_pb2 = load_proto_module("tensorflow.core.protobuf.meta_graph_pb2")
model_pb2 = load_proto_module("tensorflow_serving.apis.model_pb2")
predict_pb2 = load_proto_module("tensorflow_serving.apis.predict_pb2")
get_model_metadata_pb2 = load_proto_module("tensorflow_serving.apis.get_model_metadata_pb2")
get_model_status_pb2 = load_proto_module("tensorflow_serving.apis.get_model_status_pb2")
model_management_pb2 = load_proto_module("tensorflow_serving.apis.model_management_pb2")
model_server_config_pb2 = load_proto_module("tensorflow_serving.config.model_server_config_pb2")

__all__ = [
    "get_model_metadata_pb2",
    "get_model_status_pb2",
    "load_proto_module",
    "meta_graph_pb2",
    "model_management_pb2",
    "model_pb2",
    "model_server_config_pb2",
    "predict_pb2",
    "tensor_pb2",
    "types_pb2",
]
