"""The an4-en recipe: its preset (builds, validates, trains a few steps on the shipped FSDD data), the ``data import``
flags it and users of the original AN4 layout need, and ``recipes/an4.sh``'s import step on the data kit."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from deepspeech.cli import main
from deepspeech.data.importers import importer_kinds
from deepspeech.data.manifest import read_manifest
from deepspeech.frontend.audio import load_audio
from deepspeech.model.ds2 import DeepSpeech2
from deepspeech.modelcard import SHIP_LIMIT_BYTES
from deepspeech.presets import get_preset, small, tiny
from deepspeech.training.trainer import train
from tests.conftest import FSDD, REPO, run_cli
from tests.test_importers import SR, lines, speech, write

RECIPE = REPO / "recipes" / "an4.sh"


pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(name: str) -> int:
    cfg = get_preset(name) if name == "an4-en" else {"tiny": tiny, "small": small}[name]("en")
    return DeepSpeech2(dataclasses.replace(cfg.model, vocab_size=29)).num_parameters()  # 29: a-z, ' and space


def test_preset_an4_en(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = get_preset("an4-en")
    assert cfg.name == "an4-en" and cfg.data.lang == "en"
    # the manifests recipes/an4.sh writes; the test split is never trained or tuned on
    assert (cfg.data.train, cfg.data.dev) == ("data/an4/train.jsonl", "data/an4/dev.jsonl")
    assert "test" not in cfg.data.train + cfg.data.dev
    # between tiny and small, and shipped in float32 under the export's half-precision threshold
    n = n_params("an4-en")
    assert n_params("tiny") < n < n_params("small") and 4 * n < SHIP_LIMIT_BYTES
    a = cfg.augment
    assert a.enabled and a.speed[0] < 1 < a.speed[1] and a.noise_prob > 0 and a.freq_masks and a.time_masks
    assert (REPO / a.noise_manifest).is_file()  # shipped noise clips, training ones only
    assert cfg.select == "last" and cfg.epochs * 45 < 2 * 3600  # 45 s an epoch measured on 2 idle CPU cores
    assert main(["train", "--preset", "an4-en", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "an4-en"


def test_preset_an4_en_trains(fsdd_small: tuple[Path, Path], tmp_path: Path) -> None:
    """Two steps of the preset as it is (model, features, augmentation with the shipped noise) on FSDD digits."""
    train_m, dev_m = fsdd_small
    cfg = get_preset("an4-en")
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, train=str(train_m), dev=str(dev_m)), max_steps=2, log_every_steps=1,
        augment=dataclasses.replace(cfg.augment, noise_manifest=str(REPO / cfg.augment.noise_manifest)))
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.step == 2
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())]
    assert len(losses) == 2 and all(math.isfinite(x) and x > 0 for x in losses)
    assert (tmp_path / "run" / "last" / "model.safetensors").is_file()


def test_data_import_kinds_are_the_importers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["data", "import", "nosuch", "x", "--out", "y.jsonl"])
    err = capsys.readouterr().err
    assert all(repr(kind) in err for kind in importer_kinds()) and {"an4", "kit", "speechcommands"} <= set(
        importer_kinds())


@pytest.fixture
def kit(tmp_path: Path) -> Path:
    """A data kit set: two FSDD recordings as Opus with split keys, one transcript as the source gave it and one
    duration that disagrees with its file."""
    root = tmp_path / "en_x"
    d0 = speech(root / "audio" / "a.opus", 0, "OGG")
    speech(root / "audio" / "b.opus", 1, "OGG")
    rows = [("a", "Yes 2", "train", round(d0, 3)), ("b", "go", "dev", 9.0)]
    write(root / "manifest.jsonl", "".join(json.dumps({
        "audio": f"audio/{a}.opus", "text": t, "speaker": "s", "lang": "en", "duration_s": d, "sample_rate": SR,
        "split": sp}) + "\n" for a, t, sp, d in rows))
    return root


def test_data_import_kit(kit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.jsonl"
    base = ["data", "import", "kit", str(kit), "--out", str(out), "--no-progress"]
    assert main([*base, "--split", "train"]) == 0
    assert f"{out}: 1 utterances" in capsys.readouterr().out
    assert [r["text"] for r in lines(out)] == ["yes two"]  # normalised
    assert main([*base, "--split", "train", "--raw-text"]) == 0
    assert [r["text"] for r in lines(out)] == ["Yes 2"]
    assert main([*base, "--split", "dev"]) == 0
    assert lines(out)[0]["duration_s"] < 9.0  # measured from the file
    assert main([*base, "--split", "dev", "--no-check-audio"]) == 0
    assert lines(out)[0]["duration_s"] == 9.0  # the manifest's, kept


def test_data_import_an4_raw(tmp_path: Path) -> None:
    """The original layout's .raw files (headerless big-endian 16-bit): --raw-dir, --an4-full-train, --split."""
    root = tmp_path / "an4"
    write(root / "etc" / "an4_train.transcription", "<s> YES </s> (an251-fash-b)\n<s> NO </s> (an21-flrp-b)\n")
    for i, (spk, uid) in enumerate([("fash", "an251-fash-b"), ("flrp", "an21-flrp-b")]):  # flrp: a dev speaker
        raw = root / "wav" / "an4_clstk" / spk / f"{uid}.raw"
        raw.parent.mkdir(parents=True)
        raw.write_bytes((load_audio(FSDD / "audio" / f"{i}_jackson_0.flac") * 32767).astype(">i2").tobytes())
    out, conv = tmp_path / "m.jsonl", tmp_path / "flac"
    base = ["data", "import", "an4", str(tmp_path), "--out", str(out), "--raw-dir", str(conv), "--no-progress"]
    assert main(base) == 0  # --split train by default: the dev speakers left out
    assert [(r["text"], r["speaker"]) for r in lines(out)] == [("yes", "fash")]
    assert main([*base, "--split", "dev"]) == 0
    assert [(r["text"], r["speaker"]) for r in lines(out)] == [("no", "flrp")]
    assert main([*base, "--an4-full-train", "--raw-text"]) == 0
    assert sorted(r["text"] for r in lines(out)) == ["NO", "YES"]
    assert sorted(p.name for p in conv.rglob("*.flac")) == ["an21-flrp-b.flac", "an251-fash-b.flac"]
    assert not list(root.rglob("*.flac"))  # converted under --raw-dir only


@pytest.mark.parametrize("args, message", [
    (["kit", "--raw-dir", "d"], "--raw-dir applies to kind an4"),
    (["an4", "--no-check-audio"], "--no-check-audio applies to kind kit"),
    (["kit", "--an4-full-train"], "--an4-full-train applies to kind an4"),
    (["fsdd", "--split", "train"], "no --split"),
    (["an4", "--an4-full-train", "--split", "dev"], "dev_speakers"),
])
def test_data_import_flag_errors(args: list[str], message: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A flag that does not fit the kind is one error line and exit status 2, before anything is read."""
    kind, *rest = args
    root = tmp_path / "an4"
    write(root / "etc" / "an4_train.transcription", "<s> YES </s> (an251-fash-b)\n")
    (root / "wav" / "an4_clstk").mkdir(parents=True)
    assert main(["data", "import", kind, str(root), "--out", str(tmp_path / "m.jsonl"), *rest]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "m.jsonl").exists()


def sandbox(tmp_path: Path) -> Path:
    """A checkout stand-in holding the recipe and a link to the virtual environment, nothing else."""
    clone = tmp_path / "clone"
    (clone / "recipes").mkdir(parents=True)
    shutil.copy2(RECIPE, clone / "recipes" / "an4.sh")
    (clone / ".venv").symlink_to(REPO / ".venv")
    return clone


def run_recipe(clone: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(clone / "recipes" / "an4.sh"), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_recipe_without_the_kit_stops_with_one_line(tmp_path: Path) -> None:
    res = run_recipe(sandbox(tmp_path), env={"DATA_KIT": str(tmp_path / "nowhere")})
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.splitlines()) == 1 and "en_an4/manifest.jsonl" in res.stderr
    assert run_recipe(sandbox(tmp_path / "b"), "train").returncode == 2  # unknown stage


@pytest.mark.shared_data
def test_recipe_import_step(shared_data: Path, tmp_path: Path) -> None:
    """The import step writes the kit's protocol (869 / 79 / 130, speaker-disjoint), and a re-run keeps it."""
    clone = sandbox(tmp_path)
    (tmp_path / "shared").symlink_to(shared_data.parent)  # the recipe's default ../shared/data
    res = run_recipe(clone, "import")
    assert res.returncode == 0, res.stderr[-2000:]
    data = clone / "data" / "an4"
    utts = {s: read_manifest(data / f"{s}.jsonl") for s in ("train", "dev", "test")}
    assert {s: len(u) for s, u in utts.items()} == {"train": 869, "dev": 79, "test": 130}
    assert res.stdout.splitlines() == [f"data/an4/{s}.jsonl: {len(u)} utterances" for s, u in utts.items()]
    speakers = {s: {u.speaker for u in us} for s, us in utts.items()}
    assert not (speakers["train"] & speakers["dev"] or speakers["train"] & speakers["test"]
                or speakers["dev"] & speakers["test"])
    assert all(Path(u.audio).is_file() for us in utts.values() for u in us)
    stamps = [(data / f"{s}.jsonl").stat().st_mtime_ns for s in utts]
    again = run_recipe(clone, "import")
    assert again.returncode == 0 and again.stdout == ""
    assert [(data / f"{s}.jsonl").stat().st_mtime_ns for s in utts] == stamps


@pytest.mark.shared_data
def test_shipped_an4_en_reads_its_card(shared_data: Path, tmp_path: Path) -> None:
    """models/an4-en on AN4 test (imported from the kit as the recipe does) reads the greedy WER/CER its card and
    the README state, and beats deepspeech.pytorch's published 9.573% WER / 5.515% CER (issue 30)."""
    clone = sandbox(tmp_path)
    (tmp_path / "shared").symlink_to(shared_data.parent)
    assert run_recipe(clone, "import").returncode == 0
    test = clone / "data" / "an4" / "test.jsonl"
    res = run_cli("eval", "--model", str(REPO / "models" / "an4-en"), "--manifest", str(test), "--format", "json",
                  "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout)
    card = json.loads((REPO / "models" / "an4-en" / "metrics.json").read_text())
    assert got["n"] == 130 and abs(got["wer"] - card["test"]["wer"]) < 0.005, (got, card["test"])
    assert abs(got["cer"] - card["test"]["cer"]) < 0.005
    assert got["wer"] < 0.09573 and got["cer"] < 0.05515
