"""Training configuration: one frozen dataclass per component, serialised with every checkpoint.

Config flows one way: preset function -> ``--set a.b=value`` overrides -> frozen TrainConfig -> ``train(cfg)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deepspeech.augment.perturb import AugmentConfig
from deepspeech.frontend.features import FeatureConfig
from deepspeech.model.config import ModelConfig


@dataclass(frozen=True)
class DataConfig:
    train: str = ""  # training manifest(s), comma-separated
    dev: str = ""  # validation manifest(s), comma-separated; used for best-model selection
    lang: str = "en"  # en | zh: selects the tokenizer and normaliser
    units: str = "char"  # output units: char | pinyin (zh only: numbered-pinyin letters, see deepspeech.decoding.hanzi)
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

    def __post_init__(self) -> None:
        if self.name not in ("sgd", "adamw"):
            raise ValueError(f"optim.name must be sgd or adamw, got {self.name!r}")
        if self.schedule not in ("anneal", "cosine", "constant"):
            raise ValueError(f"optim.schedule must be anneal, cosine or constant, got {self.schedule!r}")
        if not 0 < self.lr < math.inf or not 0 < self.anneal < math.inf or self.warmup_steps < 0:  # rejects NaN
            raise ValueError("invalid optimiser settings")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"optim.ema_decay must be in [0, 1), got {self.ema_decay}")


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
    amp: bool = True  # bf16 autocast on CUDA (the CTC loss in float32)
    # bf16 autocast on the CPU as well (``deepspeech train --bf16``): convolutions, linear layers and the fused GRU's
    # large products in bfloat16 with float32 accumulation. Pays on CPUs with AMX or AVX512-BF16 (bench/amp.py).
    cpu_amp: bool = False
    threads: int = 0  # torch intra-op threads per process (0 = leave as is)
    # Fine-tuning: a model directory (an exported model or a run's best/) whose weights, tokenizer and feature
    # statistics a fresh run starts from (its model config must equal this one); ignored when the run resumes.
    init_from: str = ""
    # What best/ holds: "best" = the epoch with the lowest dev error (CER for Mandarin); "last" = the final epoch
    # (dev is still scored every epoch and reported). Selecting among noisy dev figures favours lucky epochs: on
    # digits-en's speaker cross-validation the final epoch read the held-out speakers better in 13 of 15 runs.
    select: str = "best"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.max_steps < 0 or self.save_every_steps < 0 or self.log_every_steps < 1:
            raise ValueError("invalid epochs/steps settings")
        if self.select not in ("best", "last"):
            raise ValueError(f"select must be best or last, got {self.select!r}")


def _zero(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == 0


# Options removed in issue 31: they lost their trials and nothing shipped used them (ensembles and snapshot
# ensembles, cepstral liftering, the speech_mean / level / meanvar normalisations, channel colouring, time shift;
# docs/digits-en-experiments.md tells what each did). A config.json written before keeps them at the value that
# changes nothing, which loading drops (key -> that test); any other value means the model needs an older release.
RETIRED_KEYS: dict[str, Callable[[Any], bool]] = {
    "members": lambda v: v == 1 and not isinstance(v, bool),
    "optim.cycles": lambda v: v == 1 and not isinstance(v, bool),
    "features.lifter": _zero,
    "features.speech_range_db": lambda v: True,  # read only by utterance_norm=speech_mean
    "augment.eq_db": _zero,
    "augment.pad_s": lambda v: isinstance(v, list | tuple) and len(v) == 2 and all(_zero(x) for x in v),
    "augment.pad_floor_db": lambda v: True,  # read only with pad_s
}
RETIRED_VALUES: dict[str, tuple[str, ...]] = {  # key -> its values removed in issue 31 (other values stay)
    "select": ("snapshots",),
    "features.utterance_norm": ("meanvar", "speech_mean", "level"),
}


def drop_retired(raw: dict[str, Any]) -> dict[str, Any]:
    """A TrainConfig as JSON data (``to_dict`` output of any release) -> a copy without the options retired in issue
    31 (:data:`RETIRED_KEYS`) where they hold their neutral value; a ValueError names the first that does not, or a
    retired value (:data:`RETIRED_VALUES`). Anything else, malformed data included, is left for the caller's
    checks."""
    out = dict(raw)
    for key, neutral in RETIRED_KEYS.items():
        *section, name = key.split(".")
        holder = out
        if section:
            if not isinstance(out.get(section[0]), dict):
                continue
            holder = out[section[0]] = dict(out[section[0]])
        if name in holder:
            if not neutral(holder[name]):
                raise ValueError(f"{key}={json.dumps(holder[name])} was removed in issue 31; "
                                 "this model needs an older release")
            del holder[name]
    for key, values in RETIRED_VALUES.items():
        *section, name = key.split(".")
        holder = out.get(section[0]) if section else out
        if isinstance(holder, dict) and isinstance(holder.get(name), str) and holder[name] in values:
            raise ValueError(f"{key}={json.dumps(holder[name])} was removed in issue 31; "
                             "this model needs an older release")
    return out


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
    """Inverse of :func:`to_dict`; unknown keys are an error (they usually mean a typo or a version skew). A
    TrainConfig drops the options retired in issue 31 first (:func:`drop_retired`)."""
    if cls is TrainConfig:
        d = drop_retired(d)
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
        if full in RETIRED_KEYS:
            raise ValueError(f"config key {full!r} was removed in issue 31")
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
