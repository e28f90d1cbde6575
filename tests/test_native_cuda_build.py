"""The CUDA kernels (``native/*.cu``) compile for sm_90 with nvcc against this torch's headers (compile only: nothing
CUDA runs on a CPU machine; ``scripts/device_check.sh`` checks and times them on a GPU).

Skipped when nvcc is not on the PATH. The CPU torch wheel ships the CUDA headers except one that CMake generates
(``c10/cuda/impl/cuda_cmake_macros.h``, a single define for shared-library builds); the test writes that one into a
temporary include folder when torch lacks it, so the sources compile against exactly the headers a CUDA build uses.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch.utils.cpp_extension as cpp_ext

ROOT = Path(__file__).resolve().parents[1]
NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on the PATH")


def _include_flags(tmp: Path) -> list[str]:
    dirs = [*cpp_ext.include_paths(), sysconfig.get_paths()["include"]]
    if not any((Path(d) / "c10/cuda/impl/cuda_cmake_macros.h").is_file() for d in dirs):
        stub = tmp / "stub/c10/cuda/impl/cuda_cmake_macros.h"
        stub.parent.mkdir(parents=True)
        stub.write_text("#define C10_CUDA_BUILD_SHARED_LIBS\n")
        dirs.insert(0, str(tmp / "stub"))
    return [f for d in dirs for f in ("-isystem", d)]


def test_cuda_sources_compile_for_sm90(tmp_path: Path) -> None:
    sources = sorted((ROOT / "native").glob("*.cu"))
    assert {s.name for s in sources} >= {"ctc_cuda.cu", "gru_cuda.cu"}
    flags = ["-c", "-arch=sm_90", "-std=c++17", "-O3", "-DTORCH_API_INCLUDE_EXTENSION_H", *_include_flags(tmp_path)]
    procs = {}
    try:
        for src in sources:  # in parallel: each takes a few minutes of one core (torch's headers, host and device)
            obj = tmp_path / f"{src.stem}.o"
            cmd = [str(NVCC), *flags, f"-DTORCH_EXTENSION_NAME=deepspeech_{src.stem}", str(src), "-o", str(obj)]
            procs[src.name] = (src, obj, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                          text=True, start_new_session=True))
        for name, (src, obj, proc) in procs.items():
            out, _ = proc.communicate(timeout=1500)
            assert proc.returncode == 0, f"nvcc failed on {name}:\n{out[-4000:]}"
            assert obj.stat().st_size > 10_000, f"{name}: suspiciously small object"
            # Device code for every kernel of the source is in the object (its .nv.info section names each one).
            data = obj.read_bytes()
            kernels = re.findall(r"__global__ void (\w+)", src.read_text())
            assert kernels, f"{name}: no kernels found"
            for k in kernels:
                assert b".nv.info._Z" in data and k.encode() in data, f"{name}: no device code for {k}"
    finally:  # on a failure or timeout, no compiler is left running behind the test
        for _, _, proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
