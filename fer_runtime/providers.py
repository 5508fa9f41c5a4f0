"""onnxruntime execution-provider selection and the check that the session really got them.

onnxruntime silently falls back to CPU when a provider fails to initialise (e.g. CUDA libraries
missing), so after building a session we compare what we asked for with ``session.get_providers()``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fer_runtime.choices import DEVICES
from fer_runtime.errors import InferenceError, MissingDependencyError, ProviderUnavailableError, first_line

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

ProviderSpec = str | tuple[str, dict[str, Any]]


def _name(p: ProviderSpec) -> str:
    return p if isinstance(p, str) else p[0]


def provider_names(specs: Sequence[ProviderSpec]) -> list[str]:
    """The provider names of ``specs`` (names or ``(name, options)`` pairs)."""
    return [_name(p) for p in specs]


def onnxruntime() -> Any:
    """The onnxruntime module; :class:`MissingDependencyError` saying what to install if it is missing (a bare
    ``pip install fer-toolkit`` has none: the cpu and gpu extras choose the build)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise MissingDependencyError(f"onnxruntime cannot be imported ({first_line(e)}); install fer-toolkit[cpu] "
                                     "(onnxruntime) or fer-toolkit[gpu] (onnxruntime-gpu), not both") from None
    return ort


def onnxruntime_errors() -> tuple[type[Exception], ...]:
    """The exception types onnxruntime's core raises (``Fail``, ``EPFail``, ``InvalidArgument``, ...).

    They are pybind11 classes that derive only from ``Exception``; a bug of ours (TypeError, ...) is not among them.
    """
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    found = tuple(v for v in vars(C).values() if isinstance(v, type) and issubclass(v, Exception))
    return (*found, RuntimeError)


def available_providers() -> list[str]:
    """The providers this onnxruntime build offers (imports onnxruntime)."""
    return list(onnxruntime().get_available_providers())


def requested_providers(device: str = "auto", providers: Sequence[ProviderSpec] | None = None) -> list[ProviderSpec]:
    """The provider list to give onnxruntime for ``device`` (or the explicit ``providers``, which win).

    Raises :class:`ProviderUnavailableError` if a required provider is not in this onnxruntime build.
    """
    available = available_providers()
    if providers is not None:
        wanted = list(providers)
        if not wanted:
            raise ProviderUnavailableError("providers=[] asks for no execution provider at all")
        missing = [_name(p) for p in wanted if _name(p) not in available]
        if missing:
            raise ProviderUnavailableError(f"{', '.join(missing)} not available in this onnxruntime "
                                           f"(available: {', '.join(available)})")
        return wanted
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda":
        if CUDA not in available:
            raise ProviderUnavailableError(
                f"device='cuda' but {CUDA} is not available in this onnxruntime (available: {', '.join(available)}); "
                "install fer-toolkit[gpu] (onnxruntime-gpu) with matching CUDA/cuDNN, or use device='cpu'")
        return [CUDA, CPU]
    if device == "auto" and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


def check_session_providers(requested: Sequence[ProviderSpec], session: Any, cuda_optional: bool = False) -> list[str]:
    """Return the session's providers; raise if onnxruntime dropped one we asked for.

    ``cuda_optional`` (used by ``device='auto'``) accepts a dropped CUDA: the CPU fallback is what "auto" means.
    """
    got = list(session.get_providers())
    required = [_name(p) for p in requested]
    if cuda_optional:
        required = [p for p in required if p != CUDA]
    dropped = [p for p in required if p not in got]
    if dropped:
        raise ProviderUnavailableError(
            f"onnxruntime did not initialise {', '.join(dropped)} (session has {', '.join(got)}); "
            "check the CUDA/cuDNN installation, or use device='cpu'")
    return got


def run_session(session: Any, path: object, outputs: list[str], feed: dict[str, Any]) -> list[Any]:
    """``session.run(outputs, feed)``; an onnxruntime failure becomes :class:`InferenceError` naming the model
    file ``path`` and the providers it ran on (a bug of ours keeps its traceback)."""
    try:
        return session.run(outputs, feed)
    except onnxruntime_errors() as e:
        raise InferenceError(f"{path}: onnxruntime failed to run it on {', '.join(session.get_providers())} "
                             f"({first_line(e)})") from None


def run_batched(session: Any, path: object, outputs: list[str], feeds: dict[str, Any], batch: int = 64) -> list[Any]:
    """:func:`run_session` over ``feeds`` (arrays of equal length) in slices of ``batch`` rows, each output
    concatenated back to full length."""
    import numpy as np

    n = len(next(iter(feeds.values())))
    parts = [run_session(session, path, outputs, {k: v[i:i + batch] for k, v in feeds.items()})
             for i in range(0, n, batch)]
    return [np.concatenate([part[j] for part in parts]) for j in range(len(outputs))]
