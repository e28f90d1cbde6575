"""Lazy build and load of the C++ extensions in ``native/`` (compiled once, cached by torch's extension cache)."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

SOURCES = Path(__file__).resolve().parents[2] / "native"
# Per-extension compiler flags beyond the common ones. -fno-trapping-math lets gcc if-convert the clamps of the
# branch-free exp in native/fast_math.h and vectorise the loops that call it (values are unchanged; FP exceptions
# are never observed here).
EXTRA_CFLAGS: dict[str, list[str]] = {"gru": ["-fno-trapping-math"], "ctc_loss": ["-fno-trapping-math"]}


def _enabled() -> bool:
    return os.environ.get("DEEPSPEECH_NATIVE", "1") not in ("0", "false", "no")


@functools.cache
def load_extension(name: str) -> ModuleType | None:
    """Build (first time) and import ``native/<name>.cpp``; None with one warning if that fails or is disabled."""
    if not _enabled():
        return None
    src = SOURCES / f"{name}.cpp"
    try:
        if not src.is_file():
            raise FileNotFoundError(f"{src} is missing")
        from torch.utils.cpp_extension import load

        # Built on the machine that runs it, so -march=native is safe; -fno-math-errno lets exp loops vectorise.

        flags = ["-O3", "-fopenmp", "-march=native", "-fno-math-errno", *EXTRA_CFLAGS.get(name, [])]
        return load(name=f"deepspeech_{name}", sources=[str(src)], extra_cflags=flags, extra_ldflags=["-fopenmp"],
                    verbose=False)
    except Exception as e:  # noqa: BLE001 - any build/load failure means: use the reference path
        log.warning("native %s unavailable, using the PyTorch reference: %s", name, str(e).splitlines()[0][:300])
        return None


@functools.cache
def load_cuda_extension(name: str) -> ModuleType | None:
    """Build (first time) and import ``native/<name>.cu``; None when torch has no CUDA, no GPU is visible or nvcc
    is missing (silently: the normal case on a CPU machine), or with one warning when the build fails."""
    if not _enabled():
        return None
    import torch

    if torch.version.cuda is None or not torch.cuda.is_available():
        return None
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None:
        return None
    src = SOURCES / f"{name}.cu"
    try:
        if not src.is_file():
            raise FileNotFoundError(f"{src} is missing")
        from torch.utils.cpp_extension import load

        return load(name=f"deepspeech_{name}", sources=[str(src)], extra_cflags=["-O3"],
                    extra_cuda_cflags=["-O3"], verbose=False)
    except Exception as e:  # noqa: BLE001 - any build/load failure means: use the reference path
        log.warning("native %s unavailable, using the PyTorch path: %s", name, str(e).splitlines()[0][:300])
        return None


def native_available(name: str = "ctc_loss") -> bool:
    """True when the native extension ``name`` builds and loads here."""
    return load_extension(name) is not None
