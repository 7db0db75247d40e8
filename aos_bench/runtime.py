"""What a run computes on: torch threads and deterministic algorithms set from the config, and the environment logged.

The same job moves by several F1 points with the number of CPU threads alone (the order of float additions changes),
so every run records its thread count, precision, device and library versions as `env.*` params.
"""

import os
import platform
from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision

from aos_bench.errors import UsageError


def pick_device(name: str) -> torch.device:
    """`auto` = CUDA when present, else the CPU; `cuda` without a GPU is an error (checks.RULES allows no other name)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("train.device='cuda' but no CUDA device is available; allowed here: auto, cpu")
    return torch.device(name)


def set_up(cfg: Mapping) -> None:
    """Apply `train.threads` (null = torch's choice) and `train.deterministic` to this process."""
    if cfg["threads"] is not None:
        torch.set_num_threads(cfg["threads"])
    if cfg["deterministic"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible matmuls
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    # warn_only: an op with no deterministic kernel (e.g. adaptive average pooling's backward on CUDA) warns, not fails
    torch.use_deterministic_algorithms(cfg["deterministic"], warn_only=True)


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux), else what the platform reports."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_kind() -> str:
    """The processor's model name and the vector kernels torch picks on it, e.g. 'AMD EPYC (AVX2)': two hosts of one
    model name can differ in the kernels, and so in a job's floats."""
    return f"{cpu_name()} ({torch.backends.cpu.get_cpu_capability()})"


def describe(device: torch.device, precision: str) -> dict[str, str]:
    """The `env.*` params of a run on `device` with the resolved `precision` (fp32 or bf16)."""
    return {
        "env.torch": torch.__version__,
        "env.torchvision": torchvision.__version__,
        "env.cuda": str(torch.version.cuda) if device.type == "cuda" else "none",
        "env.device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_kind(),
        "env.cpu_count": str(os.cpu_count()),
        "env.threads": str(torch.get_num_threads()),
        "env.precision": precision,
        "env.deterministic": str(torch.are_deterministic_algorithms_enabled()).lower(),
    }
