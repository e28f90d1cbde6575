"""An exported neural LM directory: the weights of a sharded training checkpoint of any layout, consolidated to one
rank (TP 1, PP 1), as safetensors + JSON, like the acoustic model directories (:mod:`deepspeech.checkpoint`).

    LM_DIR/lm.json            {"format_version", "kind": "neural-char", "config": GPTConfig fields, "chars": [...],
                               "source": the checkpoint it came from, "step"}
    LM_DIR/model.safetensors  every parameter of the one-rank GPT (lm.gpt), full (unsharded) shapes

The checkpoint is read by :func:`deepspeech.parallel.sharded_checkpoint.load_checkpoint` into a one-rank GPT: DCP
reads back the slices of each tensor-parallel shard and pipeline stage, whatever layout wrote them (arXiv 1909.08053
section 3 for the tensor-parallel split). The directory is written to ``LM_DIR.tmp`` and renamed into place, so a
reader sees the old directory or the new one, never half of one. Loading trusts nothing: lm.json is checked field by
field and the safetensors header against the model lm.json builds (names and shapes) before any tensor is read; every
fault is one :class:`LMDirError` line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from deepspeech.parallel import ParallelDims, ParallelState
from deepspeech.parallel.sharded_checkpoint import CONFIG, latest_checkpoint, load_checkpoint
from lm.gpt import GPT, GPTConfig
from lm.mamba2 import Mamba2Config
from lm.tokenizer import CharTokenizer
from lm.train import saved_model_config, shape_fields

log = logging.getLogger(__name__)

LM_JSON = "lm.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"  # beside the checkpoints (`deepspeech lm train --save DIR`) or in --out
FORMAT_VERSION = 1
KIND = "neural-char"  # a KenLM directory's lm.json has no "kind"


class LMDirError(ValueError):
    """A neural LM directory (or the checkpoint to export) that is missing, malformed or inconsistent."""


def config_from_dict(d: Any, where: str) -> GPTConfig:
    """A GPTConfig from its JSON object (``dataclasses.asdict`` form, the Mamba-2 sub-config nested)."""
    if not isinstance(d, dict):
        raise LMDirError(f"{where}: the model config is not a JSON object")
    known = {f.name for f in dataclasses.fields(GPTConfig)}
    if unknown := sorted(set(d) - known):
        raise LMDirError(f"{where}: unknown model config field(s) {', '.join(unknown)}")
    fields = dict(d)
    try:
        if isinstance(fields.get("mamba"), dict):
            fields["mamba"] = Mamba2Config(**fields["mamba"])
        return GPTConfig(**fields)
    except (TypeError, ValueError) as e:
        raise LMDirError(f"{where}: bad model config ({e})") from None


def inference_config(cfg: GPTConfig) -> GPTConfig:
    """The same weights for scoring: no dropout, no sequence parallelism, no recomputation."""
    return dataclasses.replace(cfg, dropout=0.0, sequence_parallel=False, recompute="none")


def _find_tokenizer(ckpt: Path, given: str | Path | None) -> Path:
    if given is not None:
        p = Path(given)
        p = p / TOKENIZER if p.is_dir() else p
        if not p.is_file():
            raise LMDirError(f"no tokenizer at {given}")
        return p
    for d in (ckpt, ckpt.parent, ckpt.parent.parent):
        if (d / TOKENIZER).is_file():
            return d / TOKENIZER
    raise LMDirError(f"no {TOKENIZER} beside {ckpt} (give --tokenizer: the file `deepspeech lm train --out` wrote)")


def export_lm(ckpt_dir: str | Path, out: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Consolidate the newest complete checkpoint in ``ckpt_dir`` (any TP/PP/DP layout) into the LM directory
    ``out`` (replaced atomically). ``tokenizer``: the training tokenizer's JSON (or a folder holding
    tokenizer.json); default: the one ``deepspeech lm train --save`` keeps beside the checkpoints."""
    src = latest_checkpoint(ckpt_dir)
    try:
        meta = json.loads((src / CONFIG).read_text(encoding="utf-8"))
        saved = meta["config"]["model"]
        step = int(meta.get("step", 0))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LMDirError(f"{src / CONFIG}: missing or malformed ({e})") from None
    train_cfg = config_from_dict(saved, str(src / CONFIG))
    tok_path = _find_tokenizer(src, tokenizer)
    try:
        tok = CharTokenizer.load(tok_path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LMDirError(f"{tok_path}: not a character tokenizer ({e})") from None
    if tok.vocab_size > train_cfg.vocab_size:
        raise LMDirError(f"{tok_path}: {tok.vocab_size} symbols do not fit the checkpoint's vocabulary of "
                         f"{train_cfg.vocab_size} (another model's tokenizer?)")
    cfg = inference_config(train_cfg)
    model = GPT(cfg)  # no dropout, sequence parallelism or recomputation: none of them changes a parameter
    optimizer = torch.optim.AdamW(model.parameters())  # DCP reads the moments too; they are dropped here
    load_checkpoint(src, list(model.named_parameters()), optimizer, ParallelState(ParallelDims()),
                    shape_fields(cfg, saved_model_config(str(src))))
    tensors = {n: p.detach().contiguous().clone() for n, p in model.named_parameters()}
    final = Path(out)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / WEIGHTS), metadata={"format_version": str(FORMAT_VERSION)})
    record = {"format_version": FORMAT_VERSION, "kind": KIND, "config": dataclasses.asdict(cfg),
              "chars": list(tok.chars), "source": str(src), "step": step}
    (tmp / LM_JSON).write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    for f in (tmp / WEIGHTS, tmp / LM_JSON):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
    log.info("exported %s (step %d, %d parameters) to %s", src, step, sum(t.numel() for t in tensors.values()),
             final)
    return final


def read_lm_dir(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, CharTokenizer, dict[str, Any]]:
    """Load an exported LM directory: the one-rank GPT (eval mode, on ``device``), its tokenizer and lm.json.
    Every fault (missing file, bad JSON, a tensor that does not fit lm.json's model) is one LMDirError line."""
    d = Path(path)
    if not d.is_dir():
        raise LMDirError(f"no such LM directory: {d}")
    if not (d / LM_JSON).is_file():
        raise LMDirError(f"{d}: not a neural LM directory (no {LM_JSON}; `deepspeech lm export` writes one)")
    try:
        meta = json.loads((d / LM_JSON).read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise LMDirError(f"{d / LM_JSON}: malformed ({e})") from None
    if meta.get("kind") != KIND:
        raise LMDirError(f"{d}: not a neural LM directory (lm.json kind {meta.get('kind')!r}; a KenLM directory "
                         "goes to --lm, a neural one from `deepspeech lm export` to --rescore)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise LMDirError(f"{d / LM_JSON}: format_version {meta.get('format_version')!r}, this reader knows "
                         f"{FORMAT_VERSION}")
    cfg = inference_config(config_from_dict(meta.get("config"), str(d / LM_JSON)))
    chars = meta.get("chars")
    try:
        tok = CharTokenizer(chars if isinstance(chars, list) else [])
    except ValueError as e:
        raise LMDirError(f"{d / LM_JSON}: bad chars ({e})") from None
    if tok.vocab_size > cfg.vocab_size:
        raise LMDirError(f"{d / LM_JSON}: {tok.vocab_size} chars exceed the model's vocab_size {cfg.vocab_size}")
    model = GPT(cfg)
    expected = {n: p for n, p in model.named_parameters()}
    wpath = d / WEIGHTS
    if not wpath.is_file():
        raise LMDirError(f"{d}: no {WEIGHTS}")
    try:
        with safe_open(str(wpath), "pt") as f:
            header = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise LMDirError(f"{wpath}: not a readable safetensors file ({e})") from None
    diff = [f"missing {k}" for k in expected if k not in header]
    diff += [f"unexpected {k}" for k in header if k not in expected]
    diff += [f"{k} has shape {list(header[k])} in the file, {list(p.shape)} in the model lm.json describes"
             for k, p in expected.items() if k in header and header[k] != tuple(p.shape)]
    if diff:
        more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
        raise LMDirError(f"{wpath}: the weights do not match lm.json: {'; '.join(diff[:3])}{more}")
    try:
        tensors = load_file(str(wpath))
    except (SafetensorError, OSError) as e:
        raise LMDirError(f"{wpath}: not a readable safetensors file ({e})") from None
    with torch.no_grad():
        for k, p in expected.items():
            v = tensors[k]
            if not v.is_floating_point() or not bool(torch.isfinite(v).all()):
                raise LMDirError(f"{wpath}: {k} is not finite floating point")
            p.copy_(v)
    return model.to(device).eval(), tok, meta
