"""The one path after the front end: normalised features -> the network -> (T, V) log-probabilities -> a decoder
-> the post-processing chain -> hypotheses.

    features (B x (T_b, F)) --acoustic_forward--> logits (B, T', V) --log-softmax--> B x (T'_b, V) log-probs
    (T, V) log-probs --decoder (greedy | beam: DS2 section 3.8)--> N-best --post-processing--> N-best

Every caller takes this path rather than a copy of it: ``eval``, ``transcribe`` (short files in batches, long files
segment by segment or through the streaming engine), ``lm tune`` (log-probabilities only: it decodes them many
times), and the server's partial and final results (:class:`deepspeech.inference.streaming.StreamingModel`).

The post-processing chain is :class:`PostProcessing`: today one step, a pinyin model's syllables to characters
(:mod:`deepspeech.decoding.hanzi`, when the model directory has ``hanzi/``); N-best rescoring with a neural LM belongs
in front of it, on the same N-best list, so that every route gets it at once.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from deepspeech.decoding.greedy import GreedyDecoder
from deepspeech.decoding.hanzi import PinyinToHanzi, hypothesis_to_characters
from deepspeech.decoding.hypothesis import Decoder, Hypothesis
from deepspeech.frontend.front_end import FrontEnd
from deepspeech.inference.warp_search import acoustic_forward

if TYPE_CHECKING:
    from deepspeech.checkpoint import AcousticModel


class PostProcessing:
    """What every route does to a decoder's N-best list before anyone sees it: a pinyin model's syllables become
    characters (each character keeping its syllable's output frames; the pinyin stays in ``extra["pinyin"]``)."""

    def __init__(self, hanzi: PinyinToHanzi | None = None) -> None:
        self.hanzi = hanzi

    def __call__(self, hyps: Sequence[Hypothesis]) -> list[Hypothesis]:
        if self.hanzi is None:
            return list(hyps)
        return [hypothesis_to_characters(h, self.hanzi) for h in hyps]

    def text(self, text: str) -> str:
        """The post-processed text of a bare transcript (a stream's partial result)."""
        return self.hanzi.convert(text) if self.hanzi is not None else text


class Recognizer:
    """A loaded model's path from normalised features to post-processed hypotheses, with one decoder."""

    def __init__(self, am: AcousticModel, decoder: Decoder | None = None) -> None:
        self.am = am
        self.frontend = FrontEnd(am.config.features, am.stats)
        self.forward = acoustic_forward(am)
        self.decoder: Decoder = decoder if decoder is not None else GreedyDecoder(am.tokenizer)
        self.post = PostProcessing(am.hanzi)

    def with_decoder(self, decoder: Decoder | None) -> Recognizer:
        """The same path with another decoder (greedy when None)."""
        other = copy.copy(self)
        other.decoder = decoder if decoder is not None else GreedyDecoder(self.am.tokenizer)
        return other

    @torch.no_grad()
    def log_probs(self, feats: Sequence[torch.Tensor], device: torch.device | str = "cpu") -> list[np.ndarray]:
        """B normalised (T_b, F) feature matrices -> B (T'_b, V) float32 log-probabilities, in one zero-padded
        (B, T, F) batch through the model's inference forward
        (:func:`deepspeech.inference.warp_search.acoustic_forward`)."""
        if not feats:
            return []
        lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
        batch = pad_sequence(list(feats), batch_first=True)  # (B, T, F)
        logits, out_lengths = self.forward(batch.to(device), lengths.to(device))  # (B, T', V), (B,)
        logp = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
        return [np.ascontiguousarray(logp[b, : int(out_lengths[b])]) for b in range(len(feats))]

    def decode(self, logp: np.ndarray) -> list[Hypothesis]:
        """(T, V) log-probabilities -> the post-processed N-best list, best first."""
        return self.post(self.decoder.decode(logp))

    def best(self, logp: np.ndarray) -> Hypothesis:
        """(T, V) log-probabilities -> the post-processed best hypothesis."""
        return self.decode(logp)[0]

    def postprocess_text(self, text: str) -> str:
        return self.post.text(text)
