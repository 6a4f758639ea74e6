"""Names a package exports without importing their modules until first use (standard library only).

`import lrformer_deploy.runtime` must not import onnxruntime, and `import lrformer_deploy.model` must not
import torch, yet both offer their main names at the package level:

    __getattr__, __dir__ = lazy_exports(__name__, globals(), {"Segmenter": "lrformer_deploy.runtime.segmenter"})
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, namespace: dict[str, Any],
                 exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module-level `__getattr__` and `__dir__` for `package` that import `exports[name]` on first use
    and keep the value in the package's namespace (later look-ups are plain attribute reads)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
