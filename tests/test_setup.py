"""The set-up that the README's two commands run: system packages, the stamp, CI, and the native kernels' build.

A fresh machine was found where `make demo` failed (KenLM not built: no Boost), the set-up marked itself done anyway,
CI installed packages that the README's command did not, and the native kernels were built lazily into a cache
shared by every checkout (a stale lock hung every later command). These tests keep each of those fixed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop to nobody")
def test_missing_packages_without_root_stop_with_the_exact_command() -> None:
    """Not root and no sudo: the set-up stops at once, naming the command to run (it does not warn and go on)."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEEPSPEECH_SYSTEM_PACKAGES": "deepspeech-no-such-package"}
    script = (ROOT / "scripts" / "system_packages.sh").read_text()  # on stdin: nobody may not read the checkout
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-s"], input=script,
                         env=env, capture_output=True, text=True, timeout=60, cwd="/")
    assert res.returncode == 1, res.stderr
    assert "apt-get install -y -q --no-install-recommends deepspeech-no-such-package" in res.stderr


def test_installed_packages_are_a_no_op() -> None:
    """Everything present: nothing is installed and the step succeeds (any user)."""
    res = subprocess.run(["bash", str(ROOT / "scripts" / "system_packages.sh")], capture_output=True, text=True,
                         env={**os.environ, "DEEPSPEECH_SYSTEM_PACKAGES": "bash"}, timeout=60)
    assert res.returncode == 0 and "installing" not in res.stderr, res.stderr


def _commands(script: Path) -> list[str]:
    return [line.strip() for line in script.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_the_readme_test_command_and_nothing_else() -> None:
    """CI proves the README: `.ci/run` installs nothing of its own, it runs `make test`."""
    commands = _commands(ROOT / ".ci" / "run")
    assert commands[-1] == "make test"
    words = {w for c in commands for w in c.replace("/", " ").split()}
    assert not words & {"apt-get", "apt", "pip", "install", "setup.sh", "system_packages.sh"}, commands
    assert "make test" in (ROOT / "README.md").read_text()


def test_setup_marks_itself_done_only_after_every_step() -> None:
    """The stamp is the set-up's last write, and no step's failure is turned into a warning."""
    commands = _commands(ROOT / "scripts" / "setup.sh")
    assert "set -euo pipefail" in commands
    stamp_writes = [i for i, c in enumerate(commands) if '> "$stamp"' in c]
    assert stamp_writes and stamp_writes[-1] >= len(commands) - 2, commands[-3:]
    for step in ("scripts/system_packages.sh", "scripts/build_kenlm.sh", "deepspeech.native.build"):
        line = next(c for c in commands if step in c)
        assert "||" not in line, f"a failure of {step} must stop the set-up: {line}"


def _python(code: str, native_dir: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEEPSPEECH_NATIVE_DIR": str(native_dir), "DEEPSPEECH_NATIVE": "1"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


def test_native_kernels_are_never_built_at_run_time(tmp_path: Path) -> None:
    """Nothing built (and a stale lock of a killed build lying there): loading falls back at once with one warning
    naming the set-up; it neither compiles (about 30 s) nor waits on the lock."""
    (tmp_path / "lock").touch()
    (tmp_path / ".gru-dead.partial").mkdir()
    (tmp_path / ".gru-dead.partial" / "lock").touch()
    start = time.monotonic()
    res = _python("from deepspeech.native.build import load_extension; assert load_extension('gru') is None", tmp_path,
                  timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert time.monotonic() - start < 20, "loading must not compile"
    assert "scripts/setup.sh" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gru-dead.partial", "lock"], "loading wrote nothing"


def test_build_goes_into_its_own_folder_and_redoes_a_killed_build(tmp_path: Path) -> None:
    """A killed build's leftovers (a partial folder with its lock) are removed and the build is done again, into
    the folder given (the set-up's is the checkout's .venv/native), where loading then finds it."""
    (tmp_path / ".ctc_loss-killed.partial").mkdir()
    (tmp_path / ".ctc_loss-killed.partial" / "lock").touch()
    res = _python("from deepspeech.native.build import build; print(build('ctc_loss'))", tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    code = "from deepspeech.native.build import load_extension; print(load_extension('ctc_loss').__file__)"
    loaded = _python(code, tmp_path, timeout=120)  # a new process: an extension module initialises once per process
    assert loaded.returncode == 0 and loaded.stdout == res.stdout, loaded.stderr[-2000:]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 1 and names[0].startswith("ctc_loss-"), names
    assert [p.suffix for p in (tmp_path / names[0]).iterdir()] == [".so"]


def test_the_setup_built_the_kernels_for_this_environment() -> None:
    """In the set-up's .venv the kernels are prebuilt, so the native tests run instead of skipping."""
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("not running in the checkout's .venv")
    from deepspeech.native.build import CPU_EXTENSIONS, load_extension

    assert all(load_extension(name) is not None for name in CPU_EXTENSIONS)
