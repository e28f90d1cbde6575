"""Model directories and resumable training state.

A model directory holds everything inference needs and nothing executable:
``model.safetensors`` (weights and batch-norm statistics), ``config.json`` (the full TrainConfig),
``tokenizer.json``, ``feature_stats.json``; optionally ``lm/`` (the beam search's KenLM, ``decoder.json``) and, for
a pinyin-unit Mandarin model, ``hanzi/`` (character LM + pinyin lexicon, :mod:`deepspeech.decoding.hanzi`). A training
checkpoint adds ``train_state/`` (optimizer state, trainer position, RNG, averaged weights), kept apart from the
weights: the trainer writes it with :func:`capture_train_state` and resumes with :func:`restore_training_checkpoint`.
Loading never unpickles: safetensors for weights and ``torch.load(weights_only=True)`` for optimizer state. Loading
checks before it trusts: config.json field by field against the config's types, the safetensors header's names and
shapes against a network built from the config on the meta device (no memory), then that every value is finite. A
config.json written before issue 31 may hold the options retired then at their neutral values, which loading drops
(:func:`deepspeech.config.drop_retired`). A quantized directory (:func:`quantize_model_dir`, ``deepspeech export
--quantize``) adds ``"quantization": {"scheme": "int8" | "bf16"}`` to config.json and stores its weights in that
form (:mod:`deepspeech.model.quantize`); loading builds that network and checks the file against it the same way.

Writes are atomic: a directory is written to a temporary sibling ``NAME.tmp`` (each file fsynced), completed by
``complete.json`` (every file's size, written last) and swapped in with renames (``NAME`` -> ``NAME.old``,
``NAME.tmp`` -> ``NAME``). A process killed at any moment leaves a complete ``NAME.tmp``, ``NAME`` or ``NAME.old``;
:func:`find_checkpoint` takes the newest complete one (in that order). A directory being deleted loses its
``complete.json`` first, so a deletion cut short never looks complete.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import pickle
import shutil
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from deepspeech.config import TrainConfig, drop_retired, from_dict, to_dict
from deepspeech.frontend.features import FeatureStats
from deepspeech.model.config import ModelConfig
from deepspeech.model.ds2 import DeepSpeech2
from deepspeech.model.quantize import QuantConfig, build_model, check_tensors, quantize, stored_tensors
from deepspeech.text import CharTokenizer

if TYPE_CHECKING:
    from deepspeech.training.ema import WeightEMA

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS, CONFIG, TOKENIZER, STATS, STATE_DIR = (
    "model.safetensors", "config.json", "tokenizer.json", "feature_stats.json", "train_state")
MARKER = "complete.json"  # written last: {"files": {relative path: size}}; a directory without it is incomplete
QUANTIZATION = "quantization"  # config.json's field for a quantized model (deepspeech.model.quantize.QuantConfig)
STATE_FILES = (f"{STATE_DIR}/optimizer.pt", f"{STATE_DIR}/rng.pt", f"{STATE_DIR}/trainer.json")


HANZI = "hanzi"
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}  # stored floating-point weights of any precision load into float32


class CheckpointError(ValueError):
    """A model directory that is missing parts or does not match its config."""


class TrainState(TypedDict):
    """What ``train_state/`` holds: everything resuming needs beside the weights."""

    optimizer: dict[str, Any]  # optimizer.state_dict() -> optimizer.pt
    rng: dict[str, torch.Tensor]  # {"torch": the CPU generator's state} -> rng.pt
    trainer: dict[str, Any]  # the trainer's position, JSON-able -> trainer.json
    ema: NotRequired[dict[str, torch.Tensor] | None]  # the averaged weights, when kept -> ema.safetensors


@dataclass
class AcousticModel:
    """A loaded model directory: network (eval mode), tokenizer, feature statistics and config."""

    model: DeepSpeech2
    tokenizer: CharTokenizer
    stats: FeatureStats
    config: TrainConfig
    hanzi: Any = None  # PinyinToHanzi for a pinyin-unit model with a hanzi/ folder (character LM + lexicon)

    @torch.no_grad()
    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F) features normalised by ``stats`` -> (B, T', V) logits and (B,) lengths: the network alone.
        What decodes a loaded model is :func:`deepspeech.inference.warp_search.acoustic_forward`, which adds the
        test-time warp search where the config asks for it."""
        return self.model(feats, lengths)

    @property
    def text_lang(self) -> str:
        """How this model's final text splits for error rates: "zh" (characters) or "en" (words)."""
        return "zh" if self.hanzi is not None else self.tokenizer.metric_lang


# --- filesystem steps: every change a save makes is one of these (tests inject crashes between them) -----------------

def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file and fsync it."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True)


def _rename(src: Path, dst: Path) -> None:
    """Atomic rename, made durable by an fsync of the parent directory."""
    os.replace(src, dst)
    fd = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    path.unlink()


def _rmtree(path: Path) -> None:
    shutil.rmtree(path)


def _remove_dir(path: Path) -> None:
    """Delete a directory tree, its completion marker first (a deletion cut short leaves it incomplete)."""
    if (path / MARKER).is_file():
        _unlink(path / MARKER)
    _rmtree(path)


def _json_bytes(obj: Any, indent: int | None = 1) -> bytes:
    return json.dumps(obj, indent=indent, ensure_ascii=False).encode("utf-8")


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# --- atomic directory writes ------------------------------------------------------------------------------------------

def _mark_complete(d: Path) -> None:
    """Write ``complete.json`` last: the size of every file written before it."""
    files = {p.relative_to(d).as_posix(): p.stat().st_size for p in sorted(d.rglob("*")) if p.is_file()}
    _write_file(d / MARKER, _json_bytes({"format_version": FORMAT_VERSION, "files": files}))


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace ``final`` by the complete ``tmp``. Each step leaves a complete newest copy: ``tmp`` until it is
    renamed to ``final``; ``final.old`` (the previous copy) is only deleted when it is the older one."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        _remove_dir(old)
    if final.exists():
        _rename(final, old)
    _rename(tmp, final)
    if old.exists():
        _remove_dir(old)


def _fresh_tmp(final: Path, create: bool = True) -> Path:
    """``final.tmp``, emptied of an interrupted save's leftovers (older than what is written now)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        _remove_dir(tmp)
    if create:
        _make_dir(tmp)
    return tmp


def _write_model_files(d: Path, model: DeepSpeech2, tokenizer: CharTokenizer, stats: FeatureStats,
                       cfg: TrainConfig, quantization: QuantConfig | None = None) -> None:
    tensors = stored_tensors(model, quantization)
    _write_file(d / WEIGHTS, safetensors_bytes(tensors, metadata={"format_version": str(FORMAT_VERSION)}))
    config: dict[str, Any] = {"format_version": FORMAT_VERSION, "config": to_dict(cfg)}
    if quantization is not None:
        config[QUANTIZATION] = quantization.to_dict()
    _write_file(d / CONFIG, _json_bytes(config))
    _write_file(d / TOKENIZER, _json_bytes(tokenizer.to_dict(), indent=0))
    _write_file(d / STATS, _json_bytes(dataclasses.asdict(stats), indent=None))


def save_model_dir(path: str | Path, model: DeepSpeech2, tokenizer: CharTokenizer, stats: FeatureStats,
                   cfg: TrainConfig, train_state: TrainState | None = None,
                   extra_files: dict[str, str] | None = None, quantization: QuantConfig | None = None) -> None:
    """Atomically (re)write a model directory; ``train_state`` (see :func:`capture_train_state`) adds
    ``train_state/`` for resuming; ``quantization``: ``model`` is quantized that way
    (:func:`deepspeech.model.quantize.quantize`), for inference only."""
    if quantization is not None and train_state is not None:
        raise ValueError("a quantized model directory is for inference only: no training state")
    final = Path(path)
    tmp = _fresh_tmp(final)
    _write_model_files(tmp, model, tokenizer, stats, cfg, quantization)
    for name, text in (extra_files or {}).items():
        _write_file(tmp / name, text.encode("utf-8"))
    if train_state is not None:
        sd = tmp / STATE_DIR
        _make_dir(sd)
        _write_file(sd / "optimizer.pt", _torch_bytes(train_state["optimizer"]))
        _write_file(sd / "rng.pt", _torch_bytes(train_state["rng"]))
        _write_file(sd / "trainer.json", _json_bytes(train_state["trainer"]))
        if train_state.get("ema") is not None:
            ema = {k: v.contiguous() for k, v in train_state["ema"].items()}
            _write_file(sd / "ema.safetensors", safetensors_bytes(ema))
    _mark_complete(tmp)
    _swap_in(tmp, final)


# --- finding and recovering training checkpoints ----------------------------------------------------------------------

def _candidates(final: Path) -> list[Path]:
    """Where a checkpoint may be, newest first: an unfinished swap's new copy, the current one, the previous one."""
    return [final.with_name(final.name + ".tmp"), final, final.with_name(final.name + ".old")]


def _is_complete(d: Path, legacy_ok: bool) -> bool:
    """``d`` holds a whole training checkpoint: its marker lists the required files, all present at their sizes.
    Without a marker (written before markers existed) a current or previous copy counts when every required file
    is present and loads."""
    required = [WEIGHTS, CONFIG, TOKENIZER, STATS, *STATE_FILES]
    marker = d / MARKER
    if marker.is_file():
        try:
            files = json.loads(marker.read_text(encoding="utf-8"))["files"]
            return all(r in files for r in required) and all(
                (d / rel).is_file() and (d / rel).stat().st_size == size for rel, size in files.items())
        except (ValueError, KeyError, TypeError, AttributeError, OSError):
            return False
    if not legacy_ok or not all((d / r).is_file() for r in required):
        return False
    try:
        load_train_state(d)
        with safe_open(str(d / WEIGHTS), "pt"):
            pass
        load_config(d)
    except (CheckpointError, SafetensorError, OSError):
        return False
    return True


def find_checkpoint(path: str | Path) -> Path | None:
    """The newest complete checkpoint of ``path`` (``path.tmp``, ``path`` or ``path.old``), or None when there is
    none and never was: only an unfinished first save (a partial ``path.tmp``) is a fresh start. Anything else
    without a complete copy is a CheckpointError (never a silent restart from step 0)."""
    final = Path(path)
    cands = _candidates(final)
    for cand in cands:
        if cand.is_dir() and _is_complete(cand, legacy_ok=cand != cands[0]):
            return cand
    traces = [c.name for c in cands if c.exists()]
    if traces and traces != [cands[0].name]:
        raise CheckpointError(f"{final}: no complete checkpoint among {', '.join(traces)} (interrupted saves or "
                              "damaged files); move them away to start afresh, or restore a copy")
    if traces:
        log.warning("%s: only an unfinished first checkpoint (%s); starting from step 0", final, traces[0])
    return None


def recover_checkpoint(path: str | Path) -> Path | None:
    """Make the newest complete checkpoint ``path`` itself and delete the others (so the next save cannot delete
    the only complete copy); returns ``path``, or None when there is no checkpoint (see :func:`find_checkpoint`)."""
    final = Path(path)
    tmp, _, old = _candidates(final)
    found = find_checkpoint(final)
    if found == tmp:
        log.warning("%s: completing an interrupted checkpoint swap", final)
        _swap_in(tmp, final)
    elif found == old:
        log.warning("%s: resuming from the previous checkpoint %s", final, old)
        for stale in (tmp, final):
            if stale.exists():
                _remove_dir(stale)
        _rename(old, final)
    else:
        for stale in (tmp, old):
            if stale.exists():
                _remove_dir(stale)
    return final if found is not None else None


# --- loading ----------------------------------------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_json(tp: Any, value: Any, where: str) -> None:
    """Raise CheckpointError where the JSON ``value`` cannot be a ``tp`` (a field type of the config tree)."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise CheckpointError(f"{where}: expected an object, got {json.dumps(value)[:60]}")
        hints, names = typing.get_type_hints(tp), [f.name for f in dataclasses.fields(tp)]
        if unknown := sorted(set(value) - set(names)):
            raise CheckpointError(f"{where}: unknown field(s) {', '.join(unknown)} ({_type_name(tp)} has: "
                                  f"{', '.join(names)})")
        for k, v in value.items():
            _check_json(hints[k], v, f"{where}.{k}")
        return
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for alt in args:
            try:
                _check_json(alt, value, where)
            except CheckpointError as e:
                errors.append(str(e))
            else:
                return
        raise CheckpointError(errors[0])
    if origin is tuple:
        if not isinstance(value, list):
            raise CheckpointError(f"{where}: expected a list, got {json.dumps(value)[:60]}")
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif len(args) != len(value):
            raise CheckpointError(f"{where}: expected {len(args)} values, got {len(value)}")
        for i, (a, v) in enumerate(zip(args, value, strict=True)):
            _check_json(a, v, f"{where}[{i}]")
        return
    ok = {bool: lambda v: isinstance(v, bool), int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}.get(tp, lambda v: True)
    if not ok(value):
        raise CheckpointError(f"{where}: expected {_type_name(tp)}, got {json.dumps(value)[:60]}")


def load_config(path: str | Path) -> TrainConfig:
    """``config.json`` of a model directory, checked field by field (a CheckpointError names the first fault)."""
    d = Path(path)
    try:
        raw = json.loads((d / CONFIG).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{d}: not a model directory (no {CONFIG})") from None
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{d / CONFIG}: not valid JSON ({e})") from None
    if not isinstance(raw, dict) or "config" not in raw:
        raise CheckpointError(f"{d / CONFIG}: expected an object with format_version and config")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{d}: unsupported format version {raw.get('format_version')!r}")
    if unknown := sorted(set(raw) - {"format_version", "config", QUANTIZATION}):
        raise CheckpointError(f"{d / CONFIG}: unknown field(s) {', '.join(unknown)}")
    try:
        if isinstance(raw["config"], dict):
            raw["config"] = drop_retired(raw["config"])
        _check_json(TrainConfig, raw["config"], "config")
    except ValueError as e:  # a retired option, or a CheckpointError
        raise CheckpointError(f"{d / CONFIG}: {e}") from None
    try:
        return from_dict(TrainConfig, raw["config"])
    except (ValueError, TypeError) as e:  # the config's own validation (__post_init__)
        raise CheckpointError(f"{d / CONFIG}: {e}") from None


def load_quantization(path: str | Path) -> QuantConfig | None:
    """``config.json``'s ``quantization`` (None for a float model), or a CheckpointError naming the fault."""
    d = Path(path)
    try:
        raw = json.loads((d / CONFIG).read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{d / CONFIG}: not readable ({e})") from None
    if not isinstance(raw, dict) or raw.get(QUANTIZATION) is None:
        return None
    try:
        return QuantConfig.from_dict(raw[QUANTIZATION])
    except ValueError as e:
        raise CheckpointError(f"{d / CONFIG}: {e}") from None


def _diff(header: dict[str, tuple[tuple[int, ...], str]], expected: dict[str, torch.Tensor]) -> list[str]:
    """The differences between a safetensors header and the state dict a config builds."""
    out = [f"missing {k}" for k in expected if k not in header]
    out += [f"unexpected {k}" for k in header if k not in expected]
    for k, want in expected.items():
        if k not in header:
            continue
        shape, dtype = header[k]
        if shape != tuple(want.shape):
            out.append(f"{k} has shape {list(shape)} in the file, {list(want.shape)} in the model the config builds")
        elif want.is_floating_point() != (dtype in _FLOAT_DTYPES):
            out.append(f"{k} is {dtype} in the file, {str(want.dtype).removeprefix('torch.')} in the model")
    return out


def read_weights(path: str | Path, expected: dict[str, torch.Tensor], device: str | torch.device = "cpu"
                 ) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose header matches ``expected`` (names, shapes, float or not; checked
    before any tensor is read) and whose values are all finite; else a CheckpointError naming the first faults."""
    p = Path(path)
    try:
        with safe_open(str(p), "pt") as f:
            header = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{p}: not a readable safetensors file ({e})") from None
    if diff := _diff(header, expected):
        more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
        raise CheckpointError(f"{p}: the weights do not match config.json: {'; '.join(diff[:3])}{more}")
    try:
        tensors = load_file(str(p), device=str(device))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{p}: not a readable safetensors file ({e})") from None
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{p}: {k} holds NaN or infinite values")
    return tensors


def _read_json_file(d: Path, name: str, load: Any) -> Any:
    """``load(d / name)`` with any fault of the file as one CheckpointError line."""
    try:
        return load(d / name)
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
        msg = " ".join(str(e).split())
        raise CheckpointError(msg if str(d / name) in msg else f"{d / name}: malformed ({e!r})") from None


def load_model_dir(path: str | Path, device: str | torch.device = "cpu",
                   stats_group: Any = None) -> AcousticModel:
    """Load a model directory for inference (eval mode) or, with ``stats_group``, for further training."""
    d = Path(path)
    cfg = load_config(d)
    for name in (WEIGHTS, TOKENIZER, STATS):
        if not (d / name).is_file():
            raise CheckpointError(f"{d}: missing {name}")
    tokenizer = _read_json_file(d, TOKENIZER, CharTokenizer.load)
    if tokenizer.lang != cfg.data.lang or len(tokenizer) != cfg.model.vocab_size:
        raise CheckpointError(f"{d}: tokenizer ({tokenizer.lang}, {len(tokenizer)}) does not match the config")
    quant = load_quantization(d)
    if quant is not None and stats_group is not None:
        raise CheckpointError(f"{d}: a {quant.scheme} quantized model is for inference only, not for training")
    model = _load_weights(d, cfg, device, stats_group, quant)
    hanzi = None
    from deepspeech.decoding.hanzi import LEXICON, HanziError, PinyinToHanzi  # lazy: only model loading needs it
    from deepspeech.decoding.kenlm import KenLMError

    if tokenizer.units == "pinyin" and (d / HANZI / LEXICON).is_file():
        try:
            hanzi = PinyinToHanzi.load(d / HANZI)
        except (HanziError, KenLMError) as e:
            raise CheckpointError(str(e)) from None
    return AcousticModel(model, tokenizer, _read_json_file(d, STATS, FeatureStats.load), cfg, hanzi)


def _load_weights(d: Path, cfg: TrainConfig, device: str | torch.device, stats_group: Any = None,
                  quant: QuantConfig | None = None) -> DeepSpeech2:
    """``d/model.safetensors`` into a network built from ``cfg`` and ``quant`` (eval mode), or a clear error if
    they differ. The header is checked against a network on the meta device first: a config that asks for a huge
    network costs nothing unless its weights are really there."""
    with torch.device("meta"):
        expected = build_model(cfg.model, quant).state_dict()
    tensors = read_weights(d / WEIGHTS, expected)
    if fault := check_tensors(tensors, quant):
        raise CheckpointError(f"{d / WEIGHTS}: {fault}")
    model = build_model(cfg.model, quant, stats_group=stats_group)
    model.load_state_dict(tensors)
    return model.to(device).eval()


def quantize_model_dir(src: str | Path, dst: str | Path, scheme: str) -> None:
    """Write ``dst``: the float model directory ``src`` quantized by ``scheme``
    (:mod:`deepspeech.model.quantize`), with its tokenizer, feature statistics and decoding files (``lm/``,
    ``decoder.json``, ...; never ``train_state/``)."""
    s, final = Path(src), Path(dst)
    am = load_model_dir(s)
    if load_quantization(s) is not None:
        raise CheckpointError(f"{s}: already quantized; quantize the float model directory")
    quant = QuantConfig(scheme)
    save_model_dir(final, quantize(am.model, quant), am.tokenizer, am.stats, am.config, quantization=quant)
    skip = {WEIGHTS, CONFIG, TOKENIZER, STATS, MARKER, STATE_DIR, "model.onnx"}
    for entry in sorted(s.iterdir()):
        if entry.name in skip:
            continue
        if entry.is_dir():
            shutil.copytree(entry, final / entry.name)
        else:
            shutil.copy2(entry, final / entry.name)


def load_train_state(path: str | Path) -> TrainState:
    """``train_state/`` of a checkpoint (tensors only: ``torch.load(weights_only=True)``), or a CheckpointError."""
    sd = Path(path) / STATE_DIR
    ema = sd / "ema.safetensors"
    try:
        return {
            "optimizer": torch.load(sd / "optimizer.pt", map_location="cpu", weights_only=True),
            "rng": torch.load(sd / "rng.pt", map_location="cpu", weights_only=True),
            "trainer": json.loads((sd / "trainer.json").read_text()),
            "ema": load_file(str(ema), device="cpu") if ema.is_file() else None,
        }
    except (RuntimeError, ValueError, OSError, EOFError, pickle.UnpicklingError, SafetensorError) as e:
        raise CheckpointError(f"{sd}: unreadable training state ({str(e).splitlines()[0]})") from None


def with_vocab(cfg: TrainConfig, vocab_size: int) -> TrainConfig:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size))


# --- the trainer's resumable checkpoint -------------------------------------------------------------------------------

def capture_train_state(optimizer: torch.optim.Optimizer, trainer: dict[str, Any],
                        ema: WeightEMA | None) -> TrainState:
    """The resumable state as it is now, for ``save_model_dir(train_state=...)``: the optimizer's state, torch's
    CPU RNG, the trainer's position ``trainer`` (JSON-able) and ``ema``'s averaged weights."""
    return {"optimizer": optimizer.state_dict(), "rng": {"torch": torch.get_rng_state()}, "trainer": trainer,
            "ema": ema.shadow if ema is not None else None}


def load_tokenizer_and_stats(path: str | Path) -> tuple[CharTokenizer, FeatureStats]:
    """The tokenizer and feature statistics of a model directory (a CheckpointError names a malformed file)."""
    d = Path(path)
    return _read_json_file(d, TOKENIZER, CharTokenizer.load), _read_json_file(d, STATS, FeatureStats.load)


def _check_same_model(path: Path, model_cfg: ModelConfig) -> None:
    """A CheckpointError naming every model field where the checkpoint at ``path`` differs from ``model_cfg``."""
    saved = load_config(path).model
    if saved != model_cfg:
        diff = [f"{f.name}={getattr(saved, f.name)!r} in the checkpoint, {getattr(model_cfg, f.name)!r} now"
                for f in dataclasses.fields(saved) if getattr(saved, f.name) != getattr(model_cfg, f.name)]
        raise CheckpointError(f"{path}: the checkpoint's model differs from this run's ({'; '.join(diff)}); "
                              "resume with its config or train into another directory")


def restore_training_checkpoint(path: str | Path, model: DeepSpeech2, optimizer: torch.optim.Optimizer,
                                ema: WeightEMA | None, device: str | torch.device) -> dict[str, Any]:
    """Load a training checkpoint into a run: ``model``'s weights (on ``device``), ``optimizer``, ``ema`` and
    torch's CPU RNG; return the trainer's position (trainer.json). A checkpoint of another model config is a
    CheckpointError, one without averaged weights when ``ema`` is given a RuntimeError."""
    d = Path(path)
    _check_same_model(d, model.cfg)
    model.load_state_dict(read_weights(d / WEIGHTS, model.state_dict(), device))
    state = load_train_state(d)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    if ema is not None:
        shadow = state.get("ema")
        if shadow is None:
            raise RuntimeError(f"{d}: the config averages weights (optim.ema_decay) but the checkpoint has none")
        ema.load(shadow)
    return state["trainer"]
