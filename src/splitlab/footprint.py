"""What one stage of a model costs besides time: FLOPs and activation memory.

:func:`measure_stage` runs a stage once on a sample.  FLOPs come from
:class:`torch.utils.flop_counter.FlopCounterMode` (matrix products and
convolutions, two FLOPs per multiply-accumulate).  Peak activation memory
comes from a dispatch mode that sees the outputs of every ATen operation the
stage runs and follows each output storage until the last tensor on it is
freed; the peak of that running total plus the input's bytes is the stage's
peak.  Weights and scratch memory inside a single kernel are not counted.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode


def measure_stage(
    stage: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> tuple[int, int, torch.Tensor]:
    """FLOPs and peak activation bytes of one pass of ``stage`` on ``x``.

    Returns the FLOPs, the peak activation bytes (``x`` included) and the
    stage's output; see the module's description for what each counts.
    """
    with FlopCounterMode(display=False) as counter:
        stage(x)
    meter = _ActivationMeter(x)
    with meter:
        output = stage(x)
    peak_bytes = x.untyped_storage().nbytes() + meter.peak_bytes
    return int(counter.get_total_flops()), peak_bytes, output


class _ActivationMeter(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Follows the storages the ATen operations of a pass allocate.

    A storage counts from the first operation that outputs it until the last
    tensor on it is freed; the input's storage is not counted.
    """

    def __init__(self, given: torch.Tensor) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._given = given.untyped_storage().data_ptr()
        self._tensors: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self.live_bytes = 0
        self.peak_bytes = 0

    def _released(self, key: int) -> None:
        self._tensors[key] -= 1
        if self._tensors[key] == 0:
            del self._tensors[key]
            self.live_bytes -= self._sizes.pop(key)

    def __torch_dispatch__(
        self,
        func: Callable[..., Any],
        types: object,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        result = func(*args, **(kwargs or {}))
        for value in tree_flatten(result)[0]:
            if not isinstance(value, torch.Tensor):
                continue
            storage = value.untyped_storage()
            key = storage.data_ptr()
            if key in (0, self._given):
                continue
            if key not in self._tensors:
                self._tensors[key] = 0
                self._sizes[key] = storage.nbytes()
                self.live_bytes += storage.nbytes()
            self._tensors[key] += 1
            weakref.finalize(value, self._released, key)
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        return result
