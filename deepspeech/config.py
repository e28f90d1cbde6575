"""Training configuration: one frozen dataclass per component, serialised with every checkpoint.

Config flows one way: preset function -> ``--set a.b=value`` overrides -> frozen TrainConfig -> ``train(cfg)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from deepspeech.augment import AugmentConfig
from deepspeech.features import FeatureConfig
from deepspeech.model import ModelConfig


@dataclass(frozen=True)
class DataConfig:
    train: str = ""  # training manifest(s), comma-separated
    dev: str = ""  # validation manifest(s), comma-separated; used for best-model selection
    lang: str = "en"  # en | zh: selects the tokenizer and normaliser
    units: str = "char"  # output units: char | pinyin (zh only: numbered-pinyin letters, see deepspeech.hanzi)
    min_duration_s: float = 0.05  # shorter utterances are skipped
    max_duration_s: float = 30.0  # longer utterances are skipped (DS2 trained on utterances up to ~16 s)
    max_frames: int = 24_000  # global batch budget: batch size x longest utterance, in 10 ms feature frames
    max_batch: int = 32  # utterances per global batch at most
    sortagrad: bool = True  # first epoch in increasing duration order (DS2 section 3.4)
    cache_features: bool = True  # keep training features in memory after the first epoch
    stats_utterances: int = 2000  # utterances sampled to compute the feature normalisation statistics

    def __post_init__(self) -> None:
        if self.lang not in ("en", "zh"):
            raise ValueError(f"data.lang must be en or zh, got {self.lang!r}")
        if self.units not in ("char", "pinyin") or (self.units == "pinyin" and self.lang != "zh"):
            raise ValueError(f"data.units must be char, or pinyin for zh; got {self.units!r}")
        if self.max_frames < 1 or self.max_batch < 1 or not self.min_duration_s < self.max_duration_s:  # NaN too
            raise ValueError("invalid data limits")


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"  # sgd (Nesterov momentum, DS2 section 3) | adamw
    lr: float = 3e-4
    momentum: float = 0.9  # sgd only
    betas: tuple[float, float] = (0.9, 0.98)  # adamw only
    weight_decay: float = 0.0
    schedule: str = "anneal"  # anneal: lr / anneal**epoch (DS2) | cosine | constant
    anneal: float = 1.1  # per-epoch divisor for the anneal schedule (DS2 used 1.2)
    warmup_steps: int = 0  # linear warm-up from 0
    min_lr_ratio: float = 0.05  # cosine floor, as a fraction of lr
    grad_clip: float = 400.0  # global gradient-norm clip (0 = off)
    ema_decay: float = 0.0  # > 0: validate and ship an exponential moving average of the weights (training/ema.py)
    # cosine only: the schedule restarts from lr this many times over the run, each cycle ending at its floor: the
    # warm restarts of SGDR (Loshchilov and Hutter, 2017); select="snapshots" keeps each cycle's final weights
    cycles: int = 1

    def __post_init__(self) -> None:
        if self.name not in ("sgd", "adamw"):
            raise ValueError(f"optim.name must be sgd or adamw, got {self.name!r}")
        if self.schedule not in ("anneal", "cosine", "constant"):
            raise ValueError(f"optim.schedule must be anneal, cosine or constant, got {self.schedule!r}")
        if not 0 < self.lr < math.inf or not 0 < self.anneal < math.inf or self.warmup_steps < 0:  # rejects NaN
            raise ValueError("invalid optimiser settings")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"optim.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 1 <= self.cycles <= 64 or (self.cycles > 1 and self.schedule != "cosine"):
            raise ValueError(f"optim.cycles must be 1-64, and above 1 only with the cosine schedule, got {self.cycles}")


@dataclass(frozen=True)
class TrainConfig:
    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 10
    max_steps: int = 0  # stop after this many optimiser steps (0 = run all epochs)
    seed: int = 0
    save_every_steps: int = 200  # resumable checkpoint interval (also saved at every epoch end)
    log_every_steps: int = 10
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    threads: int = 0  # torch intra-op threads per process (0 = leave as is)
    # Fine-tuning: a model directory (an exported model or a run's best/) whose weights, tokenizer and feature
    # statistics a fresh run starts from (its model config must equal this one); ignored when the run resumes.
    init_from: str = ""
    # What best/ holds: "best" = the epoch with the lowest dev error (CER for Mandarin); "last" = the final epoch
    # (dev is still scored every epoch and reported). Selecting among noisy dev figures favours lucky epochs: on
    # digits-en's speaker cross-validation the final epoch read the held-out speakers better in 13 of 15 runs.
    # "snapshots" = the final weights of each of optim.cycles cosine cycles, kept in snapshots/K/ and shipped as an
    # ensemble (Huang et al., "Snapshot ensembles: train 1, get M for free", ICLR 2017; :mod:`deepspeech.ensemble`).
    select: str = "best"
    # An ensemble of this many members, trained independently from seeds seed, seed + 1, ... and combined by
    # hypothesis at inference (:mod:`deepspeech.ensemble`); each member costs one training run and one forward pass.
    members: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.members <= 16:
            raise ValueError(f"members must be 1-16, got {self.members}")
        if self.epochs < 1 or self.max_steps < 0 or self.save_every_steps < 0 or self.log_every_steps < 1:
            raise ValueError("invalid epochs/steps settings")
        if self.select not in ("best", "last", "snapshots"):
            raise ValueError(f"select must be best, last or snapshots, got {self.select!r}")
        if self.select == "snapshots" and (self.optim.cycles < 2 or self.epochs % self.optim.cycles):
            raise ValueError(f"select=snapshots needs optim.cycles >= 2 dividing epochs ({self.epochs}), "
                             f"got {self.optim.cycles}")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _convert(tp: Any, value: Any) -> Any:
    """Build a value of type ``tp`` from JSON data (dataclasses, tuples, scalars)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)  # type: ignore[arg-type]
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        return tuple(_convert(a, v) for a, v in zip(args, value, strict=True))
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Inverse of :func:`to_dict`; unknown keys are an error (they usually mean a typo or a version skew)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return cls(**{k: _convert(hints[k], v) for k, v in d.items()})


def _parse_scalar(tp: Any, text: str) -> Any:
    if tp is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {text!r}")
    if tp in (int, float):
        return tp(text)
    if tp is str:
        return text
    return _convert(tp, json.loads(text))


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply ``a.b=value`` strings to a frozen dataclass tree; returns a new validated config."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        cfg = _set(cfg, key.strip().split("."), text, key)
    return cfg


def _set(obj: Any, path: list[str], text: str, full: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    name = path[0]
    if name not in hints:
        valid = ", ".join(f.name for f in dataclasses.fields(obj))
        raise ValueError(f"unknown config key {full!r} ({type(obj).__name__} has: {valid})")
    if len(path) == 1:
        try:
            value = _parse_scalar(hints[name], text)
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"bad value for {full!r}: {e}") from None
        return dataclasses.replace(obj, **{name: value})
    child = getattr(obj, name)
    if not dataclasses.is_dataclass(child):
        raise ValueError(f"{full!r}: {name} is not a section")
    return dataclasses.replace(obj, **{name: _set(child, path[1:], text, full)})
