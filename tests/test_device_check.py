"""``scripts/device_check.sh`` on a machine without a GPU: its stage 0 (the GPU stages' Python compiled, their imports
resolved, the planned cost of the training step printed) runs, then it stops at the GPU boundary with one clear line
and exit status 3, before building or timing anything. The GPU stages themselves run on a borrowed GPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from deepspeech.model.config import ConvSpec, ModelConfig
from deepspeech.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device_check.sh"


def test_stops_cleanly_at_the_gpu_boundary() -> None:
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert lines[-1].startswith("device_check: no GPU visible to torch") and "GPU boundary" in lines[-1]
    assert sum("no GPU" in line for line in lines) == 1  # one line says it
    assert re.search(r"stage 2 step: tiny, 32 x 8 s per GPU, [0-9.]+ TFLOP", proc.stdout), proc.stdout
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr
    assert "== 1." not in proc.stdout  # nothing of the GPU stages ran


def test_training_step_model_is_the_tiny_preset() -> None:
    """The GPU stage writes ``tiny``'s model out (the GPU machine may lack the audio stack the presets import)."""
    source = SCRIPT.read_text()
    match = re.search(r"^TINY = (ModelConfig\(.*?\))\n(?=\S)", source, re.S | re.M)
    assert match is not None
    assert eval(match.group(1), {"ModelConfig": ModelConfig, "ConvSpec": ConvSpec}) == get_preset("tiny").model
