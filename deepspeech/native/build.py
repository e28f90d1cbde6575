"""Build (at set-up) and load (at run time) the C++ extensions in ``native/``.

The CPU extensions are compiled by ``scripts/setup.sh`` (``python -m deepspeech.native.build``) into the running
environment's own folder, ``<sys.prefix>/native/<name>-<tag>/`` (the checkout's ``.venv/native/``), where ``tag``
hashes the sources, the headers, the compiler flags, the torch version and the machine. Nothing is compiled lazily at
run time and nothing is shared across checkouts: :func:`load_extension` imports the prebuilt module, or logs one
warning and returns None (the PyTorch reference then runs) when the set-up has not built it.

Each build runs in a fresh temporary folder beside the target and is renamed into place only once it is complete, so
a build killed at any point leaves no half-built module and no lock behind; the next set-up removes the leftovers and
builds again.

The CUDA extensions (``*.cu``) can only build where torch has CUDA, a GPU is visible and nvcc is found (never on
these machines): the set-up builds them there too, and ``scripts/device_check.sh`` builds them on first load into the
same kind of folder with the same atomic rename.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

SOURCES = Path(__file__).resolve().parents[2] / "native"
CPU_EXTENSIONS = ("ctc_loss", "gru")
CUDA_EXTENSIONS = ("ctc_cuda", "gru_cuda")
# Per-extension compiler flags beyond the common ones. -fno-trapping-math lets gcc if-convert the clamps of the
# branch-free exp in native/fast_math.h and vectorise the loops that call it (values are unchanged; FP exceptions
# are never observed here). Built on the machine that runs it, so -march=native is safe; -fno-math-errno lets exp
# loops vectorise.
CFLAGS = ["-O3", "-fopenmp", "-march=native", "-fno-math-errno"]
EXTRA_CFLAGS: dict[str, list[str]] = {"gru": ["-fno-trapping-math"], "ctc_loss": ["-fno-trapping-math"]}


def _enabled() -> bool:
    return os.environ.get("DEEPSPEECH_NATIVE", "1") not in ("0", "false", "no")


def build_root() -> Path:
    """Where built extensions live: ``$DEEPSPEECH_NATIVE_DIR``, else ``<sys.prefix>/native`` (the checkout's .venv)."""
    return Path(os.environ.get("DEEPSPEECH_NATIVE_DIR") or Path(sys.prefix) / "native")


def _source(name: str) -> Path:
    return SOURCES / (f"{name}.cu" if name in CUDA_EXTENSIONS else f"{name}.cpp")


def _flags(name: str) -> list[str]:
    return ["-O3"] if name in CUDA_EXTENSIONS else [*CFLAGS, *EXTRA_CFLAGS.get(name, [])]


def _tag(name: str) -> str:
    """A hash of everything the built module depends on: its source, every header, flags, torch and the machine."""
    import torch

    h = hashlib.sha256()
    for path in [_source(name), *sorted(SOURCES.glob("*.h"))]:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    h.update(" ".join([*_flags(name), torch.__version__, platform.machine(), sys.version]).encode())
    return h.hexdigest()[:16]


def _target(name: str) -> Path:
    return build_root() / f"{name}-{_tag(name)}"


def _module_file(folder: Path, name: str) -> Path | None:
    found = sorted(folder.glob(f"deepspeech_{name}*.so")) if folder.is_dir() else []
    return found[0] if found else None


def build(name: str) -> Path:
    """Compile ``native/<name>`` into its target folder (a no-op when it is there); returns the module file."""
    target = _target(name)
    done = _module_file(target, name)
    if done is not None:
        return done
    src = _source(name)
    if not src.is_file():
        raise FileNotFoundError(f"{src} is missing")
    from torch.utils.cpp_extension import load

    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{name}-*.partial"):  # a build killed earlier: start over
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", suffix=".partial", dir=target.parent))
    try:
        kwargs: dict[str, object] = {"extra_cflags": _flags(name), "verbose": False, "build_directory": str(work)}
        if name in CUDA_EXTENSIONS:
            kwargs["extra_cuda_cflags"] = ["-O3"]
        else:
            kwargs["extra_ldflags"] = ["-fopenmp"]
        load(name=f"deepspeech_{name}", sources=[str(src)], is_python_module=True, **kwargs)  # type: ignore[arg-type]
        for junk in work.iterdir():  # keep the module only (object files and ninja state are not needed)
            if not junk.name.endswith(".so"):
                shutil.rmtree(junk) if junk.is_dir() else junk.unlink()
        os.replace(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for old in target.parent.glob(f"{name}-*"):  # earlier builds of other sources
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    built = _module_file(target, name)
    assert built is not None
    return built


def _import(name: str, path: Path) -> ModuleType:
    import torch  # noqa: F401 - the extension links against torch's libraries, which must be loaded first

    spec = importlib.util.spec_from_file_location(f"deepspeech_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def load_extension(name: str) -> ModuleType | None:
    """The prebuilt ``native/<name>.cpp`` module; None with one warning when the set-up has not built it."""
    if not _enabled():
        return None
    try:
        path = _module_file(_target(name), name)
        if path is None:
            log.warning("native %s is not built for this environment (run scripts/setup.sh); using the PyTorch "
                        "reference", name)
            return None
        return _import(name, path)
    except Exception as e:  # noqa: BLE001 - any load failure means: use the reference path
        log.warning("native %s unavailable, using the PyTorch reference: %s", name, str(e).splitlines()[0][:300])
        return None


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX tiles or AVX512-BF16): there bf16 autocast makes training
    steps faster (the acoustic trainer's ``cpu_amp``: 1.25-1.39x, ``bench/amp.py``; a 10M GPT LM about 2.5x);
    elsewhere bf16 is emulated and slower than float32."""
    import torch

    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def cuda_buildable() -> bool:
    """True where the CUDA extensions can build and run: torch with CUDA, a visible GPU and nvcc."""
    import torch

    if torch.version.cuda is None or not torch.cuda.is_available():
        return False
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME is not None


@functools.cache
def load_cuda_extension(name: str) -> ModuleType | None:
    """``native/<name>.cu``: None (silently) where CUDA cannot build, else the module, built on first load into the
    environment's folder with the same atomic rename as the set-up's build; one warning when that fails."""
    if not _enabled() or not cuda_buildable():
        return None
    try:
        return _import(name, build(name))
    except Exception as e:  # noqa: BLE001 - any build/load failure means: use the reference path
        log.warning("native %s unavailable, using the PyTorch path: %s", name, str(e).splitlines()[0][:300])
        return None


def native_available(name: str = "ctc_loss") -> bool:
    """True when the native extension ``name`` is built and loads here."""
    return load_extension(name) is not None


def main(argv: list[str] | None = None) -> int:
    """Build every extension this machine can build (the set-up's step); exit status 1 when one fails."""
    parser = argparse.ArgumentParser(prog="python -m deepspeech.native.build", description=main.__doc__)
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = list(CPU_EXTENSIONS) + (list(CUDA_EXTENSIONS) if cuda_buildable() else [])
    failed = 0
    for name in names:
        try:
            log.info("native %s: %s", name, build(name))
        except Exception as e:  # noqa: BLE001 - report each failure in one line, build the rest
            failed += 1
            log.error("native %s failed to build: %s", name, str(e).strip().splitlines()[-1][:500])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
