"""Model directories and resumable training state.

A model directory holds everything inference needs and nothing executable:
``model.safetensors`` (weights and batch-norm statistics), ``config.json`` (the full TrainConfig),
``tokenizer.json``, ``feature_stats.json``; an ensemble (``config.members`` > 1) adds ``members/K/`` with each
other member's weights and statistics (:mod:`deepspeech.ensemble`); optionally ``lm/`` (the beam search's KenLM,
``decoder.json``) and, for a pinyin-unit Mandarin model, ``hanzi/`` (character LM + pinyin lexicon,
:mod:`deepspeech.hanzi`). A training
checkpoint adds ``train_state/`` (optimizer state, trainer position, RNG), kept apart from the weights. Loading
never unpickles: safetensors for weights and ``torch.load(weights_only=True)`` for optimizer state.

Writes are atomic: a checkpoint is written to a temporary sibling directory and swapped in with renames, so a
process killed at any moment leaves either the old or the new checkpoint complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from deepspeech.config import TrainConfig, from_dict, to_dict
from deepspeech.features import FeatureStats
from deepspeech.model import DeepSpeech2
from deepspeech.text import CharTokenizer

FORMAT_VERSION = 1
WEIGHTS, CONFIG, TOKENIZER, STATS, STATE_DIR = (
    "model.safetensors", "config.json", "tokenizer.json", "feature_stats.json", "train_state")


HANZI = "hanzi"
MEMBERS = "members"  # an ensemble's members 1..M-1: members/K/{model.safetensors, feature_stats.json}
SNAPSHOTS = "snapshots"  # a run's per-cycle model directories (select="snapshots")


class CheckpointError(ValueError):
    """A model directory that is missing parts or does not match its config."""


@dataclass
class AcousticModel:
    """A loaded model directory: network (eval mode), tokenizer, feature statistics and config."""

    model: DeepSpeech2
    tokenizer: CharTokenizer
    stats: FeatureStats
    config: TrainConfig
    hanzi: Any = None  # PinyinToHanzi for a pinyin-unit model with a hanzi/ folder (character LM + lexicon)
    # An ensemble's other members (``members/K/``), each with its own feature statistics (:mod:`deepspeech.ensemble`).
    members: list[tuple[DeepSpeech2, FeatureStats]] = dataclasses.field(default_factory=list)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F) features normalised by ``stats`` -> (B, T', V) logits and (B,) lengths: the network, with the
        test-time warp search of ``features.warp_search`` where the config asks for it
        (:mod:`deepspeech.warp_search`). An ensemble returns (B, T', M, V): each member's logits, member 0 first,
        each member reading the features under its own statistics."""
        from deepspeech.warp_search import warp_search  # lazy: checkpoint loading does not need augment

        warps = self.config.features.warp_search
        first = warp_search(self.model, feats, lengths, self.stats, warps)
        if not self.members:
            return first
        valid = (torch.arange(feats.shape[1], device=feats.device)[None, :] < lengths[:, None]).unsqueeze(-1)
        raw = self.stats.denormalize(feats)
        outs = [first[0]] + [warp_search(m, torch.where(valid, st.normalize(raw), 0.0), lengths, st, warps)[0]
                             for m, st in self.members]
        return torch.stack(outs, dim=2), first[1]

    @property
    def n_members(self) -> int:
        return 1 + len(self.members)

    @property
    def text_lang(self) -> str:
        """How this model's final text splits for error rates: "zh" (characters) or "en" (words)."""
        return "zh" if self.hanzi is not None else self.tokenizer.metric_lang


def _write_model_files(d: Path, model: DeepSpeech2, tokenizer: CharTokenizer, stats: FeatureStats,
                       cfg: TrainConfig) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(d / WEIGHTS), metadata={"format_version": str(FORMAT_VERSION)})
    (d / CONFIG).write_text(json.dumps({"format_version": FORMAT_VERSION, "config": to_dict(cfg)}, indent=1))
    tokenizer.save(d / TOKENIZER)
    stats.save(d / STATS)


def _swap_in(tmp: Path, final: Path) -> None:
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def _fsync_dir(d: Path) -> None:
    for p in d.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def save_model_dir(path: str | Path, model: DeepSpeech2, tokenizer: CharTokenizer, stats: FeatureStats,
                   cfg: TrainConfig, train_state: dict[str, Any] | None = None,
                   extra_files: dict[str, str] | None = None) -> None:
    """Atomically (re)write a model directory; ``train_state`` adds ``train_state/`` for resuming.

    ``train_state`` keys: ``optimizer`` (state dict), ``trainer`` (JSON-able dict), ``rng`` (tensor dict), and
    optionally ``ema`` (the averaged weights, a tensor dict).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _write_model_files(tmp, model, tokenizer, stats, cfg)
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    if train_state is not None:
        sd = tmp / STATE_DIR
        sd.mkdir()
        torch.save(train_state["optimizer"], sd / "optimizer.pt")
        torch.save(train_state["rng"], sd / "rng.pt")
        (sd / "trainer.json").write_text(json.dumps(train_state["trainer"], indent=1))
        if train_state.get("ema") is not None:
            save_file({k: v.contiguous() for k, v in train_state["ema"].items()}, str(sd / "ema.safetensors"))
    _fsync_dir(tmp)
    _swap_in(tmp, final)


def find_checkpoint(path: str | Path) -> Path | None:
    """The complete checkpoint at ``path``, or the previous one left by a swap interrupted mid-way."""
    final = Path(path)
    for cand in (final, final.with_name(final.name + ".old")):
        if (cand / WEIGHTS).is_file() and (cand / STATE_DIR / "trainer.json").is_file():
            return cand
    return None


def load_config(path: str | Path) -> TrainConfig:
    d = Path(path)
    try:
        raw = json.loads((d / CONFIG).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{d}: not a model directory (no {CONFIG})") from None
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{d}: unsupported format version {raw.get('format_version')}")
    return from_dict(TrainConfig, raw["config"])


def load_model_dir(path: str | Path, device: str | torch.device = "cpu",
                   stats_group: Any = None) -> AcousticModel:
    """Load a model directory for inference (eval mode) or, with ``stats_group``, for further training."""
    d = Path(path)
    cfg = load_config(d)
    for name in (WEIGHTS, TOKENIZER, STATS):
        if not (d / name).is_file():
            raise CheckpointError(f"{d}: missing {name}")
    tokenizer = CharTokenizer.load(d / TOKENIZER)
    if tokenizer.lang != cfg.data.lang or len(tokenizer) != cfg.model.vocab_size:
        raise CheckpointError(f"{d}: tokenizer ({tokenizer.lang}, {len(tokenizer)}) does not match the config")
    model = _load_weights(d, cfg, device, stats_group)
    members = [_load_member(d / MEMBERS / str(k), cfg, device) for k in range(1, cfg.members)]
    hanzi = None
    from deepspeech.hanzi import LEXICON, PinyinToHanzi  # lazy: only model loading needs it

    if tokenizer.units == "pinyin" and (d / HANZI / LEXICON).is_file():
        hanzi = PinyinToHanzi.load(d / HANZI)
    return AcousticModel(model, tokenizer, FeatureStats.load(d / STATS), cfg, hanzi, members)


def _load_member(d: Path, cfg: TrainConfig, device: str | torch.device) -> tuple[DeepSpeech2, FeatureStats]:
    """One extra member of an ensemble: ``members/K/`` with its weights and feature statistics."""
    for name in (WEIGHTS, STATS):
        if not (d / name).is_file():
            raise CheckpointError(f"{d.parent.parent}: the config lists {cfg.members} ensemble members; "
                                  f"missing {d / name}")
    return _load_weights(d, cfg, device), FeatureStats.load(d / STATS)


def _load_weights(d: Path, cfg: TrainConfig, device: str | torch.device, stats_group: Any = None) -> DeepSpeech2:
    """``d/model.safetensors`` into a network built from ``cfg`` (eval mode), or a clear error if they differ."""
    model = DeepSpeech2(cfg.model, stats_group=stats_group)
    missing, unexpected = model.load_state_dict(load_file(str(d / WEIGHTS), device="cpu"), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{d}: weights do not match the config (missing {missing}, unexpected {unexpected})")
    return model.to(device).eval()


def assemble_ensemble(member_dirs: Sequence[str | Path], out: str | Path) -> None:
    """Model directories of independently trained members (same config but the seed, same tokenizer) -> one
    ensemble model directory (atomically): member 0's files, ``config.members``, and ``members/K/`` with each
    other member's weights and feature statistics. A member that is itself an ensemble (a snapshot ensemble)
    contributes all of its members, in order."""
    dirs = [Path(p) for p in member_dirs]
    if not dirs:
        raise CheckpointError("an ensemble needs at least one member")
    cfgs = [load_config(p) for p in dirs]
    for p, c in zip(dirs[1:], cfgs[1:], strict=True):
        if c.model != cfgs[0].model or c.features != cfgs[0].features:
            raise CheckpointError(f"{p}: its model or feature config differs from {dirs[0]}'s")
        if CharTokenizer.load(p / TOKENIZER) != CharTokenizer.load(dirs[0] / TOKENIZER):
            raise CheckpointError(f"{p}: its tokenizer differs from {dirs[0]}'s")
    parts = [q for p, c in zip(dirs, cfgs, strict=True)
             for q in [p, *(p / MEMBERS / str(k) for k in range(1, c.members))]]
    for name in (WEIGHTS, STATS):
        if missing := [str(q / name) for q in parts if not (q / name).is_file()]:
            raise CheckpointError(f"missing {', '.join(missing)}")
    final = Path(out)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(dirs[0], tmp, ignore=shutil.ignore_patterns(STATE_DIR, MEMBERS))
    cfg = dataclasses.replace(cfgs[0], members=len(parts))
    (tmp / CONFIG).write_text(json.dumps({"format_version": FORMAT_VERSION, "config": to_dict(cfg)}, indent=1))
    for k, p in enumerate(parts[1:], start=1):
        (tmp / MEMBERS / str(k)).mkdir(parents=True)
        for name in (WEIGHTS, STATS):
            shutil.copy2(p / name, tmp / MEMBERS / str(k) / name)
    _fsync_dir(tmp)
    _swap_in(tmp, final)


def load_train_state(path: str | Path) -> dict[str, Any]:
    sd = Path(path) / STATE_DIR
    ema = sd / "ema.safetensors"
    return {
        "optimizer": torch.load(sd / "optimizer.pt", map_location="cpu", weights_only=True),
        "rng": torch.load(sd / "rng.pt", map_location="cpu", weights_only=True),
        "trainer": json.loads((sd / "trainer.json").read_text()),
        "ema": load_file(str(ema), device="cpu") if ema.is_file() else None,
    }


def with_vocab(cfg: TrainConfig, vocab_size: int) -> TrainConfig:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size))
