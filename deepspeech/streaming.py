"""Exact streaming inference for unidirectional DS2 models, batched across streams (DS2 section 7, Batch Dispatch).

A stream's audio arrives in pieces of any size. Each call to :meth:`StreamingModel.step` takes the new audio of
several streams, advances every stream by as many output frames as its audio allows, and returns their
log-probabilities. What each stream carries between calls (:class:`StreamSession`):

- the feature state (samples not yet in a full 20 ms window, :func:`deepspeech.features.stream_frames`; all
  streams' new windows then go through one FFT);
- per convolution layer, its input frames not yet consumed: output frame j of a layer with time kernel k = 2p + 1
  and stride s reads input frames j*s - p .. j*s + p, so a layer can emit frame j once frame j*s + p has arrived;
  the buffer starts with p zero frames (the whole-utterance convolution's left padding) and, at the end of the
  stream, gets p zero frames (its right padding; frames past the end are zero in the whole-utterance model too);
- per recurrent layer, the hidden state (h, and c for LSTMs); rows of equal length run the layer's fused
  kernel (:class:`deepspeech.native.gru.FusedGRU`) in one call, ragged batches run packed sequences;
- the lookahead (row) convolution's pending frames: output t needs h_t .. h_t+tau (section 3.5, eq. 5), so it is a
  convolution with tau frames of right padding and none on the left.

Batch norm runs on its saved statistics (eval mode), so every operation is per frame or causal within the buffers
above, and the concatenated outputs equal the whole-utterance forward pass to float rounding (tested). Rows of a
batch may hold different amounts of audio: convolutions run on right-padded buffers and each row keeps only its
own valid outputs; recurrent layers run on packed sequences starting from each row's carried state.

Shapes: features (t, F); convolution buffers (C, F_l, n); recurrent state (layers, H); log-probs (t', V).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from deepspeech.beam import BeamSearchDecoder, Hypothesis, best_hypothesis
from deepspeech.checkpoint import AcousticModel
from deepspeech.decoding import ids_to_text
from deepspeech.features import StreamState, frames_to_log_spectrogram, stream_frames
from deepspeech.model import CLIP


class StreamingError(ValueError):
    """A model that cannot stream (bidirectional, or per-utterance feature normalisation)."""


def check_streamable(am: AcousticModel) -> None:
    cfg = am.config
    if cfg.model.bidirectional:
        raise StreamingError(f"{cfg.name}: a bidirectional model needs the whole utterance; stream a unidirectional "
                             "model (the ds2-streaming / tiny-streaming presets)")
    if cfg.features.utterance_norm != "none":
        raise StreamingError(f"{cfg.name}: per-utterance feature normalisation ({cfg.features.utterance_norm}) "
                             "needs the whole utterance; streaming models use utterance_norm='none'")


@dataclass
class StreamSession:
    """The state one stream carries between steps, and what it has produced so far."""

    features: StreamState
    conv_buffers: list[torch.Tensor]  # per conv layer: (C_in, F_in, n) input frames not yet consumed
    hidden: list[tuple[torch.Tensor, ...]]  # per recurrent layer: (H,) tensors (h,) or (h, c)
    lookahead_buffer: torch.Tensor  # (n, H)
    log_probs: list[np.ndarray] = field(default_factory=list)  # (t', V) blocks, in order
    samples: int = 0  # audio consumed, at 16 kHz
    finished: bool = False
    _ids: list[int] = field(default_factory=list)  # greedy path, collapsed
    _last: int = -1

    @property
    def num_frames(self) -> int:
        return sum(b.shape[0] for b in self.log_probs)

    def all_log_probs(self, vocab: int) -> np.ndarray:
        return np.concatenate(self.log_probs) if self.log_probs else np.zeros((0, vocab), np.float32)


class StreamingModel:
    """Steps many :class:`StreamSession` s of one unidirectional model in one batched forward pass."""

    def __init__(self, am: AcousticModel, device: torch.device | str = "cpu") -> None:
        check_streamable(am)
        self.am, self.device = am, torch.device(device)
        self.model = am.model.to(self.device).eval()
        self.cfg = am.config.model
        self.feature_cfg = am.config.features
        self.mean = torch.tensor(am.stats.mean, dtype=torch.float32)
        self.std = torch.tensor(am.stats.std, dtype=torch.float32)
        self.vocab = self.cfg.vocab_size
        # Channels-last convolutions: oneDNN's fast path for the short time windows of a step (about 6x faster for
        # the 2nd DS2 layer at batch 32 on one core); results differ from NCHW by float rounding only.
        self._weights = [c.conv.weight.detach().contiguous(memory_format=torch.channels_last)
                         for c in self.model.convs]
        self.blank = am.tokenizer.blank_id

    # ------------------------------------------------------------------------------------------------ sessions

    def new_session(self) -> StreamSession:
        bufs, ch, f = [], 1, self.cfg.n_features
        for conv in self.model.convs:
            k, s = conv.spec.kernel, conv.spec.stride
            bufs.append(torch.zeros(ch, f, k[1] // 2))
            ch, f = conv.spec.channels, (f + 2 * (k[0] // 2) - k[0]) // s[0] + 1
        h = self.cfg.rnn_hidden
        n_state = 2 if self.cfg.rnn_type == "lstm" else 1
        hidden = [tuple(torch.zeros(h) for _ in range(n_state)) for _ in range(self.cfg.rnn_layers)]
        return StreamSession(StreamState(), bufs, hidden, torch.zeros(0, h))

    def partial_text(self, session: StreamSession) -> str:
        """The greedy transcript of everything decoded so far (collapsed incrementally)."""
        return ids_to_text(session._ids, self.am.tokenizer)

    def final_hypothesis(self, session: StreamSession, decoder: BeamSearchDecoder | None) -> Hypothesis:
        return best_hypothesis(session.all_log_probs(self.vocab), self.am.tokenizer, decoder)

    # ------------------------------------------------------------------------------------------------ the step

    @torch.no_grad()
    def step(self, sessions: Sequence[StreamSession], audio: Sequence[np.ndarray], final: Sequence[bool]
             ) -> list[np.ndarray]:
        """Advance each session by its new 16 kHz float32 ``audio`` (any length, possibly empty); ``final`` marks
        a stream's last call. Returns each session's new log-probability frames (t'_i, V)."""
        if not (len(sessions) == len(audio) == len(final)):
            raise ValueError("sessions, audio and final must have the same length")
        if not sessions:
            return []
        for s in sessions:
            if s.finished:
                raise StreamingError("stream already finished")
        frames = []
        for s, a, fin in zip(sessions, audio, final, strict=True):
            f, s.features = stream_frames(a, s.features, self.feature_cfg, final=fin)
            s.samples += int(np.asarray(a).size)
            frames.append(f)
        # Every stream's new windows through one FFT and one normalisation, then split back per stream.
        feats = (frames_to_log_spectrogram(torch.cat(frames), self.feature_cfg) - self.mean) / self.std
        xs = [f.T.unsqueeze(0) for f in feats.split([f.shape[0] for f in frames])]  # (1, F, t) each
        for layer, conv in enumerate(self.model.convs):
            xs = self._conv(conv, layer, sessions, xs, final)
        xs = [x.reshape(x.shape[0] * x.shape[1], x.shape[2]).T for x in xs]  # (t', C*F')
        xs = self._recurrent(sessions, xs)
        if self.model.lookahead is not None:
            xs = self._lookahead(sessions, xs, final)
        # The output layers are per frame: all streams' new frames in one call, split back afterwards.
        counts = [x.shape[0] for x in xs]
        if sum(counts):
            x = torch.cat(xs).to(self.device)
            x = self.model.out_bn(x, torch.ones(x.shape[0], 1, device=self.device))
            all_logp = torch.log_softmax(self.model.fc(x).float(), dim=-1).cpu().numpy()
            # Copies, not views: a long-lived session must not keep every other stream's frames alive.
            logps = [a.copy() for a in np.split(all_logp, np.cumsum(counts)[:-1])]
        else:
            logps = [np.zeros((0, self.vocab), np.float32) for _ in sessions]
        out = []
        for s, logp, fin in zip(sessions, logps, final, strict=True):
            s.log_probs.append(logp)
            for i in logp.argmax(axis=1).tolist() if logp.size else []:
                if i != s._last and i != self.blank:
                    s._ids.append(i)
                s._last = i
            s.finished = fin
            out.append(logp)
        return out

    def _conv(self, conv: torch.nn.Module, layer: int, sessions: Sequence[StreamSession], xs: list[torch.Tensor],
              final: Sequence[bool]) -> list[torch.Tensor]:
        (kf, kt), (sf, st) = conv.spec.kernel, conv.spec.stride
        bufs = []
        for s, x, fin in zip(sessions, xs, final, strict=True):
            b = torch.cat([s.conv_buffers[layer], x], dim=-1)
            if fin:
                b = F.pad(b, (0, kt // 2))
            bufs.append(b)
        counts = [0 if b.shape[-1] < kt else (b.shape[-1] - kt) // st + 1 for b in bufs]
        for s, b, m in zip(sessions, bufs, counts, strict=True):
            s.conv_buffers[layer] = b[..., m * st:].clone()
        f_out = self._freq_out(conv, xs[0].shape[1])
        out = [torch.zeros(conv.spec.channels, f_out, 0) for _ in sessions]
        rows = [i for i, m in enumerate(counts) if m > 0]
        if not rows:
            return out
        n = max(bufs[i].shape[-1] for i in rows)
        padded = [F.pad(bufs[i], (0, n - bufs[i].shape[-1])) for i in rows]
        if len(padded) == 1:  # oneDNN picks a ~15x slower algorithm for a batch of one 1-channel input: add a row
            padded.append(torch.zeros_like(padded[0]))
        batch = torch.stack(padded).to(self.device)
        y = F.conv2d(batch.contiguous(memory_format=torch.channels_last), self._weights[layer], None, (sf, st),
                     (kf // 2, 0))
        y = F.hardtanh(conv.bn(y, torch.ones(1, 1, 1, y.shape[-1], device=self.device)), 0.0, CLIP).cpu()
        for j, i in enumerate(rows):
            out[i] = y[j, :, :, : counts[i]]
        return out

    @staticmethod
    def _freq_out(conv: torch.nn.Module, f: int) -> int:
        kf, sf = conv.spec.kernel[0], conv.spec.stride[0]
        return (f + 2 * (kf // 2) - kf) // sf + 1

    def _recurrent(self, sessions: Sequence[StreamSession], xs: list[torch.Tensor]) -> list[torch.Tensor]:
        rows = [i for i, x in enumerate(xs) if x.shape[0] > 0]
        if not rows:
            return [torch.zeros(0, self.cfg.rnn_hidden) for _ in sessions]
        lengths = torch.tensor([xs[i].shape[0] for i in rows])
        x = torch.nn.utils.rnn.pad_sequence([xs[i] for i in rows], batch_first=True).to(self.device)
        ones = torch.ones(x.shape[0], x.shape[1], 1, device=self.device)
        equal = bool((lengths == lengths[0]).all())
        for layer, rec in enumerate(self.model.rnns):
            if rec.bn is not None:
                x = rec.bn(x, ones)
            state = tuple(torch.stack([sessions[i].hidden[layer][k] for i in rows])[None].to(self.device)
                          for k in range(len(sessions[rows[0]].hidden[layer])))
            h0 = state if len(state) == 2 else state[0]
            if equal:  # the usual case (every stream sent the same frame size): one fused call, no packing
                x, new = rec.rnn(x, h0)
            else:
                packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
                y, new = rec.rnn(packed, h0)
                x, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
            new = new if isinstance(new, tuple) else (new,)
            for j, i in enumerate(rows):
                sessions[i].hidden[layer] = tuple(t[0, j].cpu() for t in new)
        out = [torch.zeros(0, self.cfg.rnn_hidden) for _ in sessions]
        x = x.cpu()
        for j, i in enumerate(rows):
            out[i] = x[j, : int(lengths[j])]
        return out

    def _lookahead(self, sessions: Sequence[StreamSession], xs: list[torch.Tensor], final: Sequence[bool]
                   ) -> list[torch.Tensor]:
        la = self.model.lookahead
        tau = la.context
        bufs = []
        for s, x, fin in zip(sessions, xs, final, strict=True):
            b = torch.cat([s.lookahead_buffer, x])
            if fin:
                b = F.pad(b, (0, 0, 0, tau))
            bufs.append(b)
        counts = [max(0, b.shape[0] - tau) for b in bufs]
        for s, b, m in zip(sessions, bufs, counts, strict=True):
            s.lookahead_buffer = b[m:].clone()
        out = [torch.zeros(0, self.cfg.rnn_hidden) for _ in sessions]
        rows = [i for i, m in enumerate(counts) if m > 0]
        if not rows:
            return out
        n = max(bufs[i].shape[0] for i in rows)
        batch = torch.stack([F.pad(bufs[i], (0, 0, 0, n - bufs[i].shape[0])) for i in rows]).to(self.device)
        y = F.hardtanh(la.conv(batch.transpose(1, 2)).transpose(1, 2), 0.0, CLIP).cpu()  # (B, n - tau, H)
        for j, i in enumerate(rows):
            out[i] = y[j, : counts[i]]
        return out

    # ------------------------------------------------------------------------------------------------ helpers

    def run(self, blocks: Iterable[np.ndarray]) -> StreamSession:
        """A fresh session fed ``blocks`` of 16 kHz audio in order, the last one marked final (one block of
        look-behind, so an iterator of any length works in bounded memory)."""
        s = self.new_session()
        pending: np.ndarray | None = None
        for block in blocks:
            if pending is not None:
                self.step([s], [pending], [False])
            pending = block
        self.step([s], [pending if pending is not None else np.zeros(0, np.float32)], [True])
        return s

    def transcribe(self, audio: np.ndarray, decoder: BeamSearchDecoder | None = None,
                   chunk_samples: int | None = None) -> tuple[Hypothesis, np.ndarray]:
        """One whole waveform through a fresh session (in pieces of ``chunk_samples`` when given)."""
        step = chunk_samples or max(audio.size, 1)
        s = self.run(audio[a: a + step] for a in range(0, audio.size, step))
        return self.final_hypothesis(s, decoder), s.all_log_probs(self.vocab)
