"""Peak memory of one forward pass: weights plus the activations' high-water mark.

On CUDA this is ``torch.cuda.max_memory_allocated``. On CPU, PyTorch's profiler with
``profile_memory=True`` records every allocation and free made by tensors; the peak of their
running sum is the most memory the pass held on top of what existed before it (the weights
and the input batch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from gearshift.measure.params import parameter_bytes


@dataclass
class MemoryStats:
    """Peak memory of a forward pass in bytes.

    ``peak_bytes = weights_bytes + activations_bytes``; ``activations_bytes`` is the highest
    amount allocated during the pass (intermediates and outputs); ``method`` says how it was
    measured (``cuda`` or ``cpu-profiler``).
    """

    peak_bytes: int
    weights_bytes: int
    activations_bytes: int
    method: str

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)


def _cpu_peak_allocated(fn: Callable[[], Any]) -> int:
    """Run ``fn`` under the profiler; return the peak of the running sum of CPU allocations."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    del result
    events = []
    kineto = getattr(prof.profiler, "kineto_results", None)
    if kineto is not None:
        # Raw allocation (+) and free (-) records, each with its own timestamp.
        events = [
            (e.start_ns(), e.nbytes())
            for e in kineto.events()
            if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
        ]
    if not events:  # fall back to the self memory of every recorded op
        events = [(e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()]
    running = peak = 0
    for _, nbytes in sorted(events, key=lambda e: e[0]):
        running += nbytes
        peak = max(peak, running)
    return peak


def peak_memory(
    model_fn: Callable[[Mapping[str, Any]], Any],
    batch: Mapping[str, Any],
    model: nn.Module | None = None,
) -> MemoryStats:
    """Run ``model_fn(batch)`` once without gradients and return its peak memory.

    ``model`` gives the weights' bytes (parameters and buffers, shared ones once); when
    omitted and ``model_fn`` is itself an nn.Module, that module is used, else the weights
    count 0.
    """
    if model is None and isinstance(model_fn, nn.Module):
        model = model_fn
    weights = parameter_bytes(model, include_buffers=True) if model is not None else 0
    on_cuda = any(isinstance(v, torch.Tensor) and v.is_cuda for v in batch.values())

    def run() -> Any:
        with torch.inference_mode():
            return model_fn(batch)

    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = run()
        torch.cuda.synchronize()
        activations = torch.cuda.max_memory_allocated() - before
        del out
        return MemoryStats(weights + activations, weights, activations, "cuda")
    activations = _cpu_peak_allocated(run)
    return MemoryStats(weights + activations, weights, activations, "cpu-profiler")
