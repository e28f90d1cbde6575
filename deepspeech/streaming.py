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
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

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
    if cfg.features.warp_search:
        raise StreamingError(f"{cfg.name}: the warp search (features.warp_search) needs the whole utterance; "
                             "streaming models leave it empty")
    if am.n_members > 1:
        raise StreamingError(f"{cfg.name}: an ensemble of {am.n_members} members is combined over whole "
                             "hypotheses; stream a single model")
    if cfg.features.trim_db > 0:
        raise StreamingError(f"{cfg.name}: endpointing (features.trim_db={cfg.features.trim_db}) needs the whole "
                             "utterance; streaming models use trim_db=0")


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
        self._weights = [self._step_weight(c.conv.weight.detach()) for c in self.model.convs]
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
        olds = [s.conv_buffers[layer] for s in sessions]
        old_n, new_n = [o.shape[-1] for o in olds], [x.shape[-1] for x in xs]
        lens = [a + b + (kt // 2 if fin else 0) for a, b, fin in zip(old_n, new_n, final, strict=True)]
        counts = [0 if n < kt else (n - kt) // st + 1 for n in lens]
        # Each stream's buffer (its unconsumed frames, its new frames, and at the end of a stream the right
        # padding) as a row of one zero-padded batch. When every stream is in the same position (the usual case:
        # equal frame sizes) that is three batched ops; else one copy per piece.
        if len(set(old_n)) == 1 and len(set(new_n)) == 1 and len(set(lens)) == 1:
            batch = torch.cat([torch.stack(olds), torch.stack(xs)], dim=-1)
            if lens[0] > batch.shape[-1]:
                batch = F.pad(batch, (0, lens[0] - batch.shape[-1]))
            kept = batch[..., counts[0] * st:].clone()
            for s, k in zip(sessions, kept.unbind(0), strict=True):
                s.conv_buffers[layer] = k
        else:
            batch = xs[0].new_zeros(len(sessions), xs[0].shape[0], xs[0].shape[1], max(lens))
            for i, (o, x) in enumerate(zip(olds, xs, strict=True)):
                batch[i, :, :, : old_n[i]] = o
                batch[i, :, :, old_n[i]: old_n[i] + new_n[i]] = x
            for i, s in enumerate(sessions):
                s.conv_buffers[layer] = batch[i, :, :, counts[i] * st: lens[i]].clone()
        f_out = self._freq_out(conv, xs[0].shape[1])
        rows = [i for i, m in enumerate(counts) if m > 0]
        if not rows:
            return [xs[0].new_zeros(conv.spec.channels, f_out, 0) for _ in sessions]
        if len(rows) < len(sessions):
            batch = batch[rows]
        batch = batch[..., : max(lens[i] for i in rows)]
        if batch.shape[0] == 1:  # oneDNN picks a far slower algorithm for some batch-of-one shapes: add a row
            batch = torch.cat([batch, torch.zeros_like(batch)])
        batch = batch.to(self.device)
        if batch.shape[1] == 1:  # time taps as channels (see _step_weight): (B, 1, F, n) -> (B, kt, F, n')
            batch = batch[:, 0].unfold(2, kt, st).permute(0, 3, 1, 2)
            st = 1
        y = F.conv2d(batch.contiguous(memory_format=torch.channels_last), self._weights[layer], None, (sf, st),
                     (kf // 2, 0))
        y = F.hardtanh(conv.bn(y, torch.ones(1, 1, 1, y.shape[-1], device=self.device)), 0.0, CLIP).cpu()
        out = [y.new_zeros(conv.spec.channels, f_out, 0) for _ in sessions]
        for j, i in enumerate(rows):
            out[i] = y[j, :, :, : counts[i]]
        return out

    @staticmethod
    def _step_weight(w: torch.Tensor) -> torch.Tensor:
        """A layer's weight (O, C, kf, kt) as the step runs it, channels-last. A one-channel layer (the first)
        becomes (O, kt, kf, 1): its kt time taps turn into input channels over a time-unfolded input, so the
        convolution is kt-channel, 1 frame wide. Same sums in another order; oneDNN runs it about 3x faster than
        the one-channel form (48 streams of 100 ms, one core: 6.0 against 19.9 ms)."""
        if w.shape[1] == 1:
            w = w[:, 0].permute(0, 2, 1).unsqueeze(-1)
        return w.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def _freq_out(conv: torch.nn.Module, f: int) -> int:
        kf, sf = conv.spec.kernel[0], conv.spec.stride[0]
        return (f + 2 * (kf // 2) - kf) // sf + 1

    def _recurrent(self, sessions: Sequence[StreamSession], xs: list[torch.Tensor]) -> list[torch.Tensor]:
        rows = [i for i, x in enumerate(xs) if x.shape[0] > 0]
        if not rows:
            return [torch.zeros(0, self.cfg.rnn_hidden) for _ in sessions]
        lengths = torch.tensor([xs[i].shape[0] for i in rows])
        equal = bool((lengths == lengths[0]).all())
        x = torch.stack([xs[i] for i in rows]) if equal else pad_sequence([xs[i] for i in rows], batch_first=True)
        x = x.to(self.device)
        ones = torch.ones(x.shape[0], x.shape[1], 1, device=self.device)
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
            per_row = list(zip(*(t[0].cpu().unbind(0) for t in new), strict=True))  # rows x (h,) or (h, c)
            for j, i in enumerate(rows):
                sessions[i].hidden[layer] = per_row[j]
        out = [torch.zeros(0, self.cfg.rnn_hidden) for _ in sessions]
        x = x.cpu()
        for j, (i, y) in enumerate(zip(rows, x.unbind(0), strict=True)):
            out[i] = y if equal else y[: int(lengths[j])]
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
