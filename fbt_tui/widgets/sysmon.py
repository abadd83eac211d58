"""System monitor line: GPU utilisation and memory via nvidia-ml-py when a GPU is there, else CPU/RAM.

Readings are taken in a thread worker every couple of seconds (NVML calls can block for a few
milliseconds). Snapshot tests turn the monitor off so frames stay deterministic.
"""

from __future__ import annotations

from typing import Any

from textual import work
from textual.widgets import Static

POLL_S = 2.0


def _nvml() -> Any | None:
    """The initialised pynvml module, or None when there is no NVIDIA driver/GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() < 1:
            return None
        return pynvml
    except Exception:  # no library, no driver, no device: all mean "show CPU instead"
        return None


def gpu_count() -> int:
    """Local GPUs a run may use: NVML's count, narrowed by CUDA_VISIBLE_DEVICES when it is set (no
    torch import; a few milliseconds, so callers ask from a worker)."""
    import os
    nvml = _nvml()
    count = nvml.nvmlDeviceGetCount() if nvml is not None else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = min(count, len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))
    return count


def gpu_line(nvml: Any) -> str:
    """`GPU0 87% 10.2/80.0 GiB | GPU1 ...` for every visible device."""
    parts = []
    for i in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        util = nvml.nvmlDeviceGetUtilizationRates(handle).gpu
        mem = nvml.nvmlDeviceGetMemoryInfo(handle)
        parts.append(f"GPU{i} {util}% {mem.used / 2**30:.1f}/{mem.total / 2**30:.1f} GiB")
    return " | ".join(parts)


def cpu_line() -> str:
    """`CPU 23% | RAM 5.1/15.6 GiB` (psutil; cpu_percent measures since the previous call)."""
    import psutil

    mem = psutil.virtual_memory()
    return f"CPU {psutil.cpu_percent(interval=None):.0f}% | RAM {mem.used / 2**30:.1f}/{mem.total / 2**30:.1f} GiB"


class SysMon(Static):
    """One line of machine load; `enabled=False` shows a fixed placeholder."""

    def __init__(self, enabled: bool = True, *, id: str | None = None) -> None:
        super().__init__("system monitor off" if not enabled else "measuring...", id=id)
        self.enabled = enabled
        self._nvml: Any | None = None
        self._probed = False

    def on_mount(self) -> None:
        if self.enabled:
            self.poll()
            self.set_interval(POLL_S, self.poll)

    @work(thread=True, exclusive=True, group="sysmon")
    def poll(self) -> None:
        if not self._probed:
            self._nvml, self._probed = _nvml(), True
        try:
            text = gpu_line(self._nvml) if self._nvml is not None else cpu_line()
        except Exception as exc:  # a monitor must never take the UI down
            text = f"monitor unavailable: {exc}"
        self.app.call_from_thread(self.update, text)
