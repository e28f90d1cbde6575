"""The fixed train/dev/test protocols of the data kit (../shared/data/README.md), as manifests.

Never train or tune on a test split: recipes train on ``train``, select models on ``dev`` and report ``test``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from deepspeech.data.importers import FSDD_SPLITS, import_fsdd, split_by_speaker
from deepspeech.data.manifest import Utterance, read_manifest, write_manifest

log = logging.getLogger(__name__)


def aishell_sample_splits(utts: list[Utterance]) -> dict[str, list[Utterance]]:
    """AISHELL-1 sample: S0150 first 130 utterances (by id) train, its last 20 dev, S0252 test."""
    s0150 = sorted((u for u in utts if u.speaker == "S0150"), key=lambda u: Path(u.audio).name)
    s0252 = sorted((u for u in utts if u.speaker == "S0252"), key=lambda u: Path(u.audio).name)
    if len(s0150) < 150 or not s0252:
        raise ValueError(f"expected 150 S0150 and some S0252 utterances, found {len(s0150)} and {len(s0252)}")
    return {"train": s0150[:130], "dev": s0150[130:150], "test": s0252}


NOISE_TEST_CLIPS = ("running_tap.wav", "dude_miaowing.wav")


def noise_splits(utts: list[Utterance]) -> dict[str, list[Utterance]]:
    """The noise kit: the two named clips are test (held out for noisy evaluation), all others train."""
    test = [u for u in utts if Path(u.audio).name in NOISE_TEST_CLIPS]
    if len(test) != len(NOISE_TEST_CLIPS):
        raise ValueError(f"expected the test noise clips {NOISE_TEST_CLIPS}, found {len(test)}")
    return {"train": [u for u in utts if u not in test], "test": test}


def prepare(kind: str, source: str | Path, out: str | Path, progress: bool = True) -> dict[str, int]:
    """Write ``out/{train,dev,test}.jsonl`` for ``kind`` (fsdd | aishell-sample | noise) from ``source``.

    ``source`` is a folder of FSDD audio files, or the AISHELL sample or noise kit folder holding
    ``manifest.jsonl`` (the noise protocol has no dev split).
    """
    out = Path(out)
    if kind == "fsdd":
        splits = split_by_speaker(import_fsdd(source, progress=progress), FSDD_SPLITS)
    elif kind == "noise":
        splits = noise_splits(read_manifest(Path(source) / "manifest.jsonl"))
    elif kind == "aishell-sample":
        splits = aishell_sample_splits(read_manifest(Path(source) / "manifest.jsonl"))
    else:
        raise ValueError(f"unknown protocol {kind!r}: fsdd, aishell-sample or noise")
    counts = {name: write_manifest(out / f"{name}.jsonl", part) for name, part in splits.items()}
    log.info("%s: wrote %s to %s", kind, counts, out)
    return counts
