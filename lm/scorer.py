"""The neural character LM as a sentence scorer: natural-log P of a decoded sentence under an exported GPT
(:mod:`lm.export`), for N-best rescoring (:mod:`deepspeech.decoding.rescore`).

A sentence is scored as the LM saw text in training (lines joined with "\\n", :mod:`lm.tokenizer`): the tokens of
"\\n" + text + "\\n", where the leading newline is context only and every following character, the closing newline
included, is scored:

    log P(text) = sum_{i=1}^{n-1} log softmax(GPT(x_0 .. x_{i-1}))[x_i],   x = "\\n" + text + "\\n", n = |x|

All hypotheses of an utterance go through one right-padded (B, s) batch: the model is causal, so padding after a
sentence's end changes none of its positions' outputs. A sentence longer than the model's ``seq_len`` is scored in
windows of seq_len tokens advancing by half of it: every token is scored once, with at least seq_len / 2 tokens of
context after the first window (exact for the first seq_len tokens, an approximation beyond, as for any fixed-context
LM). Characters the tokenizer never saw map to its unknown id.
"""

from __future__ import annotations

import hashlib
import logging
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from deepspeech.decoding.beam import BeamConfig, build_decoder, model_decoder_settings
from deepspeech.decoding.rescore import RescoreConfig, Rescorer, RescoringDecoder, model_rescore_config
from lm.export import WEIGHTS, LMDirError, read_lm_dir
from lm.gpt import GPT
from lm.tokenizer import CharTokenizer

log = logging.getLogger(__name__)

BOUNDARY = "\n"
MAX_ROWS = 64  # windows per forward pass (bounds memory: rows x seq_len x vocabulary logits)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def windows(n: int, seq_len: int) -> list[tuple[int, int, int]]:
    """Windows over a sequence of n >= 2 tokens: (start, end, first scored position). Together they score each
    position 1..n-1 once, each window at most seq_len tokens long, advancing by seq_len // 2."""
    if n <= seq_len:
        return [(0, n, 1)]
    if seq_len < 2:
        raise ValueError("seq_len must be >= 2 to score in windows")
    out, start, scored, stride = [], 0, 1, max(1, seq_len // 2)
    while scored < n:
        start = min(start, n - seq_len)
        end = start + seq_len
        out.append((start, end, scored))
        scored, start = end, start + stride
    return out


class NeuralLM:
    """An exported character GPT scoring sentences (the LanguageModel and SentenceScorer protocols)."""

    def __init__(self, model: GPT, tokenizer: CharTokenizer, path: Path | None = None, sha256: str = "",
                 device: torch.device | str = "cpu") -> None:
        self.model, self.tokenizer, self.path, self.sha256 = model.eval(), tokenizer, path, sha256
        self.device = torch.device(device)
        self.seq_len = model.cfg.seq_len

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> NeuralLM:
        """An LM directory of ``deepspeech lm export``; any fault is one LMDirError line."""
        model, tok, _ = read_lm_dir(path, device)
        return cls(model, tok, Path(path), file_sha256(Path(path) / WEIGHTS), device)

    @property
    def unit(self) -> str:
        return "char"

    def log_prob(self, text: str) -> float:
        return self.log_probs([text])[0]

    @torch.no_grad()
    def log_probs(self, texts: Sequence[str]) -> list[float]:
        """Natural-log P of each sentence ("\\n" + text + "\\n", the first newline as context), batched."""
        rows: list[tuple[int, list[int], int]] = []  # (text index, window tokens, first scored local position)
        for k, text in enumerate(texts):
            ids = self.tokenizer.encode(BOUNDARY + text + BOUNDARY)
            rows += [(k, ids[s:e], first - s) for s, e, first in windows(len(ids), self.seq_len)]
        totals = [0.0] * len(texts)
        for at in range(0, len(rows), MAX_ROWS):
            part = rows[at: at + MAX_ROWS]
            length = max(len(r[1]) for r in part)
            tokens = torch.zeros((len(part), length), dtype=torch.long)  # (B, s), right-padded with id 0
            mask = torch.zeros((len(part), length - 1), dtype=torch.bool)  # (B, s-1): target position t+1 scored
            for b, (_, ids, first) in enumerate(part):
                tokens[b, : len(ids)] = torch.tensor(ids)
                mask[b, first - 1: len(ids) - 1] = True
            tokens = tokens.to(self.device)
            logits, _ = self.model(tokens)  # (s, b, V)
            logp = torch.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (B, s, V)
            target = logp[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)  # (B, s-1)
            sums = (target * mask.to(target.device)).sum(dim=1).cpu().tolist()
            for (k, _, _), v in zip(part, sums, strict=True):
                totals[k] += float(v)
        return totals


def _script(chars: Sequence[str]) -> str:
    """"han" when most letters are CJK ideographs, else "latin"."""
    han = sum(1 for c in chars if "CJK" in unicodedata.name(c, ""))
    letters = sum(1 for c in chars if c.isalpha())
    return "han" if han * 2 > max(letters, 1) else "latin"


def check_fits(lm: NeuralLM, text_lang: str, what: str) -> None:
    """The LM must write the script of the model's final text: characters for Mandarin (a pinyin model's text is
    characters after post-processing), Latin letters for English. A mismatch is one LMDirError line."""
    want = "han" if text_lang == "zh" else "latin"
    have = _script(lm.tokenizer.chars[1:])
    if have != want:
        raise LMDirError(f"{lm.path or 'the LM'}: a {have}-script character LM does not fit {what}, whose text is "
                         f"{'Mandarin characters' if want == 'han' else 'Latin letters'}")


def rescoring_decoder(model_dir: str | Path, am: Any, neural_dir: str | Path, device: torch.device | str = "cpu",
                      nbest: int | None = None, **beam: Any) -> RescoringDecoder:
    """A beam decoder for the model directory with nbest = N and the rescorer of the neural LM in ``neural_dir``:
    weights from MODEL/rescore.json when tuned for this LM, else the beam's alpha/beta and RescoreConfig's gamma.
    ``beam``: build_decoder's arguments (lm_dir, use_lm, overrides)."""
    if not Path(neural_dir).is_dir():
        raise LMDirError(f"no such LM directory: {neural_dir}")
    lm = NeuralLM.load(neural_dir, device)
    check_fits(lm, am.text_lang, f"the model {model_dir}")
    settings = model_decoder_settings(model_dir)
    settings.update({k: v for k, v in beam.items() if v is not None and k not in ("lm_dir", "use_lm")})
    base = BeamConfig(**settings)  # the beam's settings as build_decoder will make them
    default = RescoreConfig(alpha=base.alpha, beta=base.beta)
    cfg = model_rescore_config(model_dir, lm.sha256, default)
    if nbest is not None:
        cfg = RescoreConfig(alpha=cfg.alpha, beta=cfg.beta, gamma=cfg.gamma, nbest=nbest)
    width = max(base.beam_width, cfg.nbest) if beam.get("beam_width") is None else beam["beam_width"]
    decoder = build_decoder(model_dir, am.tokenizer, **{**beam, "nbest": cfg.nbest, "beam_width": width})
    log.info("rescoring the %d best with %s: alpha %.2f beta %.2f gamma %.2f", cfg.nbest, neural_dir, cfg.alpha,
             cfg.beta, cfg.gamma)
    return RescoringDecoder(decoder, Rescorer(lm, cfg, am.text_lang))
