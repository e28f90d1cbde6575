"""Greedy (best-path) CTC decoding: the most likely symbol per frame, repeats collapsed, blanks removed
(DS2 section 3.8 without a language model)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deepspeech.text import CharTokenizer


@dataclass(frozen=True)
class GreedyResult:
    text: str
    ids: list[int]
    frames: list[int]  # output frame index at which each id was emitted (first frame of its run)


def greedy_decode(logits: torch.Tensor, lengths: torch.Tensor, tokenizer: CharTokenizer,
                  blank: int = 0) -> list[GreedyResult]:
    """logits (B, T, V), lengths (B,) -> one result per utterance."""
    best = logits.argmax(-1).cpu()
    out = []
    for b in range(best.shape[0]):
        path = best[b, : int(lengths[b])].tolist()
        ids, frames, prev = [], [], blank
        for t, s in enumerate(path):
            if s != blank and s != prev:
                ids.append(s)
                frames.append(t)
            prev = s
        out.append(GreedyResult(" ".join(tokenizer.decode(ids).split()) if tokenizer.lang == "en"
                                else tokenizer.decode(ids), ids, frames))
    return out
