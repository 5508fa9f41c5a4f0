"""Training precision: what ``--precision auto`` picks on this machine, and the Keras policy for it.

``auto`` picks ``bfloat16`` (Keras ``mixed_bfloat16``) on a CPU with AMX-BF16 or AVX512-BF16,
``mixed_float16`` on a CUDA GPU, and ``float32`` otherwise. Variables, logits and the softmax stay
float32 under every policy, so checkpoints and exports do not depend on the precision.
"""
from __future__ import annotations

from pathlib import Path

PRECISIONS = ("auto", "float32", "bfloat16", "mixed_float16")
POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16", "mixed_float16": "mixed_float16"}
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The bf16 instruction-set flags this CPU reports (empty where none or not Linux)."""
    try:
        words = set(cpuinfo.read_text(errors="replace").split())
    except OSError:
        return []
    return [f for f in BF16_CPU_FLAGS if f in words]


def has_cuda_gpu() -> bool:
    """Whether TensorFlow sees a CUDA GPU."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def resolve(requested: str, *, gpu: bool | None = None, bf16_flags: list[str] | None = None) -> tuple[str, str]:
    """(precision, reason) for ``requested``; ``auto`` and unsupported choices fall back as documented.

    ``bfloat16`` asked for on a machine with neither a GPU nor a bf16 CPU runs in float32 (it would
    be emulated, many times slower); the reason says so.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; choose from {', '.join(PRECISIONS)}")
    gpu = has_cuda_gpu() if gpu is None else gpu
    flags = cpu_bf16_flags() if bf16_flags is None else bf16_flags
    if requested == "auto":
        if gpu:
            return "mixed_float16", "auto: CUDA GPU"
        if flags:
            return "bfloat16", f"auto: CPU has {'/'.join(flags)}"
        return "float32", "auto: no GPU and no bf16 CPU instructions"
    if requested == "bfloat16" and not gpu and not flags:
        return "float32", "bfloat16 asked for, but this CPU has no AMX-BF16/AVX512-BF16: continuing in float32"
    if requested == "mixed_float16" and not gpu:
        return "float32", "mixed_float16 asked for, but there is no GPU: continuing in float32"
    return requested, "asked for"
