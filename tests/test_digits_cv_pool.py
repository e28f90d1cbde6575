"""recipes/digits_cv_pool.py: folds never leak the held-out speaker (converted copies included); the summary pairs
configurations by seed and fold."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from deepspeech.data.manifest import Utterance, read_manifest, write_manifest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("digits_cv_pool", ROOT / "recipes/digits_cv_pool.py")
pool = importlib.util.module_from_spec(_spec)
sys.modules["digits_cv_pool"] = pool  # its dataclasses look their module up there
_spec.loader.exec_module(pool)


def test_folds_drop_the_held_out_speaker_everywhere(tmp_path: Path) -> None:
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(800, dtype=np.float32), 8000)
    derived = [Utterance(str(wav), "one", 0.1, spk) for spk in ("jackson/f0=1.10/vtl=0.95", "lucas", "kal16")]
    extra = tmp_path / "derived.jsonl"
    write_manifest(extra, derived)
    folds = pool.make_folds(tmp_path / "folds", [pool.FSDD_TRAIN, str(extra)])
    assert [f.held for f in folds] == ["jackson", "lucas", "nicolas"]
    for fold in folds:
        held = read_manifest(fold.held_manifest)
        assert len(held) == 500 and {u.speaker for u in held} == {fold.held}
        train = [u for path in fold.train.split(",") for u in read_manifest(path)]
        sources = {(u.speaker or "").split("/")[0] for u in train}
        assert fold.held not in sources
        assert len(read_manifest(fold.train.split(",")[0])) == 1000  # the two other FSDD speakers
        assert "kal16" in sources  # other voices stay
    assert (tmp_path / "folds/folds.txt").read_text().count("\n") == 3


def test_summary_pairs_by_seed_and_fold() -> None:
    rows = [{"config": c, "seed": s, "held": h, "wer": w} for c, s, h, w in (
        ("base", 0, "jackson", 0.20), ("base", 0, "lucas", 0.40), ("base", 1, "jackson", 0.30),
        ("new", 0, "jackson", 0.10), ("new", 0, "lucas", 0.50), ("new", 1, "jackson", 0.20),
        ("new", 1, "lucas", 0.25))]  # new's last run has no base partner: not counted as won
    table = pool.summarise(rows + [{"config": "new", "seed": 2, "held": "x", "error": "failed"}], ["base", "new"])
    lines = table.splitlines()
    assert lines[0] == "| configuration | s0 jackson | s0 lucas | s1 jackson | s1 lucas | mean | folds won vs base |"
    assert lines[2] == "| base | 20.0 | 40.0 | 30.0 | - | 30.0% (3) |  |"
    assert lines[3] == "| new | 10.0 | 50.0 | 20.0 | 25.0 | 26.2% (4) | 2/3 |"
    assert pool.summarise([], ["base"]) == "no run finished"
