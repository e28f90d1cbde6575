"""Helpers for the server tests: a real `deepspeech serve` process on a free loopback port, and test audio."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from deepspeech.frontend.audio import load_audio

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(model_dir: Path, *args: str, log_path: Path, timeout: float = 120.0, prelude: str = ""
                   ) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Start ``deepspeech serve`` and yield (process, "127.0.0.1:PORT") once /healthz answers; stop it after.
    ``prelude``: Python code run in the server process first (a fault to inject)."""
    port = free_port()
    serve = ["serve", "--model", str(model_dir), "--port", str(port), *args]
    launch = ["-c", f"{prelude}\nimport sys\nfrom deepspeech.cli import main\nsys.exit(main(sys.argv[1:]))"] \
        if prelude else ["-m", "deepspeech.cli"]
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen([sys.executable, *launch, *serve], stdout=logf, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
        host = f"127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited: {log_path.read_text()[-3000:]}")
                try:
                    if httpx.get(f"http://{host}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start: {log_path.read_text()[-3000:]}")
                time.sleep(0.2)
            yield proc, host
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


def memory_kb(pid: int, field: str = "VmHWM") -> int:
    """A process's resident memory from /proc (VmRSS now, VmHWM its peak), in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def pcm16_wav(src: Path, dst: Path, pad_s: float = 0.0) -> Path:
    """``src`` at 16 kHz, quantised to 16 bits (so streaming its PCM and reading the file give the same samples)."""
    wav = load_audio(src)
    if pad_s:
        wav = np.concatenate([np.zeros(int(pad_s * 16000), np.float32), wav, np.zeros(int(pad_s * 16000), np.float32)])
    # int16 written as is: libsndfile reads it back as k / 32768, exactly what the server makes of the PCM.
    sf.write(str(dst), np.clip(np.round(wav * 32768), -32768, 32767).astype(np.int16), 16000, subtype="PCM_16")
    return dst
