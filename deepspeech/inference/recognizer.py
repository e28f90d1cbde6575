"""The one path after the front end: normalised features -> the network -> (T, V) log-probabilities -> a decoder
-> the post-processing chain -> hypotheses.

    features (B x (T_b, F)) --acoustic_forward--> logits (B, T', V) --log-softmax--> B x (T'_b, V) log-probs
    (T, V) log-probs --decoder (greedy | beam: DS2 section 3.8)--> N-best --post-processing--> N-best

Every caller takes this path rather than a copy of it: ``eval``, ``transcribe`` (short files in batches, long files
segment by segment or through the streaming engine), ``lm tune`` (log-probabilities only: it decodes them many
times), and the server's partial and final results (:class:`deepspeech.inference.streaming.StreamingModel`).

The post-processing chain is :class:`PostProcessing`, two steps on the whole N-best list: a pinyin model's syllables
to characters (:mod:`deepspeech.decoding.hanzi`, when the model directory has ``hanzi/``), then N-best rescoring with a
neural LM (:mod:`deepspeech.decoding.rescore`, when the decoder is a ``RescoringDecoder``: ``--rescore LM_DIR``).
Rescoring comes after the conversion so that a pinyin model's character hypotheses are scored by a character LM.
Every route gets both at once; a stream's partial results (bare greedy text) get the conversion only.
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
from deepspeech.decoding.rescore import Rescorer, RescoringDecoder
from deepspeech.frontend.front_end import FrontEnd
from deepspeech.inference.warp_search import acoustic_forward

if TYPE_CHECKING:
    from deepspeech.checkpoint import AcousticModel


class PostProcessing:
    """What every route does to a decoder's N-best list before anyone sees it: a pinyin model's syllables become
    characters (each character keeping its syllable's output frames; the pinyin stays in ``extra["pinyin"]``), then
    the list is re-ranked by a neural LM when a rescorer is given (its score in ``extra["neural_lm"]``)."""

    def __init__(self, hanzi: PinyinToHanzi | None = None, rescorer: Rescorer | None = None) -> None:
        self.hanzi, self.rescorer = hanzi, rescorer

    def __call__(self, hyps: Sequence[Hypothesis]) -> list[Hypothesis]:
        out = list(hyps) if self.hanzi is None else [hypothesis_to_characters(h, self.hanzi) for h in hyps]
        return self.rescorer(out) if self.rescorer is not None else out

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
        self.post = PostProcessing(am.hanzi, _rescorer(decoder))

    def with_decoder(self, decoder: Decoder | None) -> Recognizer:
        """The same path with another decoder (greedy when None)."""
        other = copy.copy(self)
        other.decoder = decoder if decoder is not None else GreedyDecoder(self.am.tokenizer)
        other.post = PostProcessing(self.am.hanzi, _rescorer(decoder))
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


def _rescorer(decoder: Decoder | None) -> Rescorer | None:
    """The rescorer a :class:`RescoringDecoder` carries to the post-processing (None for any other decoder)."""
    return decoder.rescorer if isinstance(decoder, RescoringDecoder) else None
