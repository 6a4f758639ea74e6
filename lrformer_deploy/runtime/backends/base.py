"""The one small interface every backend implements (in the spirit of Polygraphy's runners).

    with OnnxRuntimeRunner("model.onnx") as runner:      # activate() ... deactivate()
        outputs = runner.infer({"image": batch})          # dict name -> numpy array

`activate()` does the expensive loading (sessions, engines, device buffers) so that a runner object can
be built cheaply and handed around; `infer()` takes and returns host numpy arrays keyed by tensor name.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class Runner(ABC):
    #: short name shown in summaries, e.g. "onnxruntime[CPUExecutionProvider]"
    name: str = "runner"
    #: whether infer() may be called from several threads at once on one activated runner
    thread_safe: bool = False

    def __init__(self) -> None:
        self.is_active = False

    def activate(self) -> "Runner":
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            try:
                self._deactivate()
            finally:
                self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    @abstractmethod
    def _activate(self) -> None: ...

    def _deactivate(self) -> None:
        pass

    @abstractmethod
    def infer(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        """Run the model on `feed` (input name -> array) and return output name -> host array."""

    def io_info(self) -> tuple[list[tuple[str, tuple]], list[tuple[str, tuple]]]:
        """(inputs, outputs) as (name, shape) lists, read from the loaded model; needs activate()."""
        raise NotImplementedError
