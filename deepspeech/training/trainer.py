"""The acoustic-model trainer: single process or ``torchrun`` data parallel through deepspeech.parallel.

CTC loss (DS2 section 3.1) averaged over the global batch, SortaGrad batches (section 3.4), SGD with Nesterov
momentum or AdamW, warm-up plus anneal/cosine learning-rate schedules, gradient-norm clipping, bf16 autocast on
GPUs (and on CPUs with ``cpu_amp``), validation WER/CER each epoch with best-model selection, and resumable
checkpoints: a run killed at any point (SIGKILL included) restarts from its last checkpoint and ends with the same
weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from deepspeech.checkpoint import (
    AcousticModel,
    CheckpointError,
    capture_train_state,
    find_checkpoint,
    load_model_dir,
    load_tokenizer_and_stats,
    recover_checkpoint,
    restore_training_checkpoint,
    save_model_dir,
    with_vocab,
)
from deepspeech.config import OptimConfig, TrainConfig
from deepspeech.data.dataset import SpeechDataset, select_utterances
from deepspeech.data.manifest import Utterance, read_manifest
from deepspeech.data.sampler import BatchPlan, epoch_batches, shard
from deepspeech.frontend.features import FeatureStats
from deepspeech.inference.evaluate import evaluate_dataset
from deepspeech.metrics import ErrorCounts
from deepspeech.model.ds2 import DeepSpeech2, ctc_loss
from deepspeech.native import cpu_has_fast_bf16
from deepspeech.parallel import (
    ParallelState,
    all_reduce_sum,
    dp_loss_scale,
    group_size,
    init_parallel,
    peer_failures_as_errors,
    wrap_data_parallel,
)
from deepspeech.text import CharTokenizer, build_tokenizer
from deepspeech.training.ema import WeightEMA

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    epoch: int
    best: dict[str, Any] | None


def read_manifests(spec: str) -> list[Utterance]:
    """Comma-separated manifest paths -> utterances (bad lines skipped by read_manifest)."""
    utts: list[Utterance] = []
    for p in [s.strip() for s in spec.split(",") if s.strip()]:
        utts.extend(read_manifest(p))
    return utts


def lr_at(o: OptimConfig, step: int, epoch: int, total_steps: int) -> float:
    """The learning rate of ``step`` (a cosine schedule reaches its floor at ``total_steps`` and stays there)."""
    if o.schedule == "anneal":
        lr = o.lr / o.anneal**epoch
    elif o.schedule == "cosine":
        progress = min(step / max(total_steps, 1), 1.0)
        lr = o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    else:
        lr = o.lr
    if o.warmup_steps and step < o.warmup_steps:
        lr *= (step + 1) / o.warmup_steps
    return lr


def make_optimizer(model: torch.nn.Module, o: OptimConfig) -> torch.optim.Optimizer:
    if o.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=True,
                               weight_decay=o.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)


class _MetricsLog:
    """metrics.jsonl on rank 0, and TensorBoard when it is installed."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional extra
                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                pass

    def keep_until(self, step: int) -> None:
        """Drop the records of steps after ``step`` (written before a crash, after the checkpoint resumed from) and
        any partly written line, so that a resumed run's file has each record once; rewritten atomically."""
        if not self.enabled or not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
                kept.append(line)
        if len(kept) == len(lines):
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        log.info("metrics.jsonl: dropped %d records after step %d", len(lines) - len(kept), step)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k not in ("step", "epoch"):
                    self.tb.add_scalar(k, v, record.get("step", 0))


def _prepare_vocab_and_stats(cfg: TrainConfig, ps: ParallelState, train_utts: list[Utterance],
                             ckpt: Path | None, init: AcousticModel | None) -> tuple[CharTokenizer, FeatureStats]:
    """The checkpoint's vocabulary and statistics, else ``init``'s, else built from the training data (the
    statistics on rank 0, broadcast)."""
    if ckpt is not None:
        return load_tokenizer_and_stats(ckpt)
    if init is not None:
        return init.tokenizer, init.stats
    tokenizer = build_tokenizer(cfg.data.lang, (u.text for u in train_utts), cfg.data.units)
    payload: list[Any] = [None]
    if ps.is_main:
        ds = SpeechDataset(train_utts, tokenizer, cfg.features, None, cache=False)
        log.info("computing feature statistics on up to %d utterances", cfg.data.stats_utterances)
        payload = [ds.compute_stats(cfg.data.stats_utterances, cfg.seed)]
    if ps.distributed:
        dist.broadcast_object_list(payload, src=0)
    return tokenizer, payload[0]


def _resume_point(last: Path, ps: ParallelState) -> Path | None:
    """The checkpoint to resume from (``last``), after every rank agreed there is one and rank 0 made the newest
    complete copy ``last`` itself; None for a fresh run. Interrupted saves without a complete copy are an error."""
    found = find_checkpoint(last)  # every rank: the same verdict, or the same error
    if ps.distributed:
        dist.barrier()
    if ps.is_main:
        recover_checkpoint(last)
    if ps.distributed:
        dist.barrier()
    return last if found is not None else None


@dataclass
class _Data:
    """A run's vocabulary, feature statistics and datasets."""

    cfg: TrainConfig  # the run's config, its vocab_size the tokenizer's
    tokenizer: CharTokenizer
    stats: FeatureStats
    train: SpeechDataset  # the utterances within the duration limits whose labels fit their output frames
    dev: SpeechDataset | None  # None without dev data
    init: AcousticModel | None  # the model init_from names (a fresh run only)


def _load_data(cfg: TrainConfig, ps: ParallelState, ckpt: Path | None) -> _Data:
    """Read the manifests, take the vocabulary and statistics (:func:`_prepare_vocab_and_stats`), build the
    datasets."""
    train_utts = read_manifests(cfg.data.train)
    dev_utts = read_manifests(cfg.data.dev) if cfg.data.dev else []
    init = load_model_dir(cfg.init_from) if ckpt is None and cfg.init_from else None
    tokenizer, stats = _prepare_vocab_and_stats(cfg, ps, train_utts, ckpt, init)
    cfg = with_vocab(cfg, len(tokenizer))
    if init is not None and init.config.model != cfg.model:
        raise CheckpointError(f"init_from {cfg.init_from}: its model config differs from this run's "
                              f"({init.config.model} != {cfg.model})")
    out_frames = lambda n: int(cfg.model.output_lengths(torch.tensor([n]))[0])  # noqa: E731
    train_utts = select_utterances(train_utts, tokenizer, cfg.data.min_duration_s, cfg.data.max_duration_s,
                                   out_frames, cfg.features)
    train_ds = SpeechDataset(train_utts, tokenizer, cfg.features, stats, cache=cfg.data.cache_features,
                             augment=cfg.augment, seed=cfg.seed)
    dev_ds = SpeechDataset(dev_utts, tokenizer, cfg.features, stats, cache=True) if dev_utts else None
    return _Data(cfg, tokenizer, stats, train_ds, dev_ds, init)


def _build_model(cfg: TrainConfig, ps: ParallelState, init: AcousticModel | None
                 ) -> tuple[DeepSpeech2, torch.optim.Optimizer, WeightEMA | None]:
    """The network from ``cfg.seed`` (or ``init``'s weights), its optimizer and, when averaging, its EMA."""
    torch.manual_seed(cfg.seed)
    model = DeepSpeech2(cfg.model, stats_group=ps.dp_group).to(ps.device)
    optimizer = make_optimizer(model, cfg.optim)
    if init is not None:
        model.load_state_dict(init.model.state_dict())  # stored float16 weights are cast to the model's float32
        log.info("fine-tuning from %s", cfg.init_from)
    ema = WeightEMA(model, cfg.optim.ema_decay) if cfg.optim.ema_decay else None
    return model, optimizer, ema


def _cpu_has_fast_bf16() -> bool:
    """:func:`deepspeech.native.cpu_has_fast_bf16`, with one warning where it is not (``cpu_amp`` then stays off:
    emulated bf16 is slower than float32)."""
    fast = cpu_has_fast_bf16()
    if not fast:
        log.warning("cpu_amp: this CPU has neither AMX nor AVX512-BF16 (bf16 would be emulated): training in float32")
    return fast


@dataclass
class _Position:
    """Where a run is and what it kept: ``train_state/trainer.json``, whose keys are these fields in this order."""

    epoch: int = 0  # the epoch in progress (the next one, once an epoch has ended)
    batch: int = 0  # batches of ``epoch`` done
    step: int = 0  # optimizer steps taken (skipped non-finite ones included)
    best: dict[str, Any] | None = None  # the end-of-epoch record of the model in best/
    audio_s: float = 0.0  # seconds of training audio seen (after augmentation)

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> _Position:
        """A saved position; a field it lacks (saved before the field existed) keeps its default."""
        return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved})


@dataclass
class _Window:
    """Sums over the steps since the last metrics record, for its averages."""

    loss: float = 0.0  # summed CTC loss of the global batches
    n: int = 0  # utterances in them
    audio_s: float = 0.0  # seconds of audio in them
    t0: float = dataclasses.field(default_factory=time.perf_counter)

    def record(self, step: int, epoch: int, lr: float, grad_norm: float) -> dict[str, Any]:
        dt = time.perf_counter() - self.t0
        return {"step": step, "epoch": epoch, "loss": self.loss / max(self.n, 1), "lr": lr, "grad_norm": grad_norm,
                "audio_s_per_s": self.audio_s / dt}


class _Run:
    """One run of :func:`train`: its data, model, optimizer and position, and the steps that advance them."""

    def __init__(self, data: _Data, ps: ParallelState, out: Path, ckpt: Path | None, progress: bool) -> None:
        cfg = self.cfg = data.cfg
        self.data, self.ps, self.out, self.progress, self.device = data, ps, out, progress, ps.device
        self.dp = group_size(ps.dp_group)
        self.plan = BatchPlan(cfg.data.max_frames, cfg.data.max_batch, cfg.data.sortagrad, cfg.seed, min_batch=self.dp,
                              hop_ms=cfg.features.hop_ms)
        self.model, self.optimizer, self.ema = _build_model(cfg, ps, data.init)
        self.state = _Position()
        if ckpt is not None:
            self.state = _Position.from_json(
                restore_training_checkpoint(ckpt, self.model, self.optimizer, self.ema, self.device))
            log.info("resumed from %s at epoch %d batch %d step %d", ckpt, self.state.epoch, self.state.batch,
                     self.state.step)
        self.ddp = wrap_data_parallel(self.model, ps)
        log.info("%s: %d parameters, %d train / %d dev utterances, dp=%d", cfg.name, self.model.num_parameters(),
                 len(data.train), len(data.dev) if data.dev is not None else 0, self.dp)
        self.total_steps = cfg.max_steps or cfg.epochs * len(epoch_batches(data.train.durations, self.plan, 0))
        self.metrics = _MetricsLog(out, ps.is_main)
        self.metrics.keep_until(self.state.step)
        self.autocast = cfg.amp and (self.device.type == "cuda" or (self.device.type == "cpu" and cfg.cpu_amp
                                                                     and _cpu_has_fast_bf16()))
        self.fallback = next(i for i in range(len(data.train)) if data.train.get(i) is not None)

    def fit(self) -> TrainResult:
        """Train the remaining epochs, or up to ``max_steps``; best/ without dev data is the last model."""
        done = self._max_steps_reached()
        for epoch in range(self.state.epoch, self.cfg.epochs):
            if done or self._train_epoch(epoch):
                break
            self._end_epoch(epoch)
        if self.data.dev is None and self.ps.is_main:  # no validation data: the last model is the best we know
            with self._shipped_weights() as shipped:
                save_model_dir(self.out / "best", shipped, self.data.tokenizer, self.data.stats, self.cfg)
        self._barrier()
        return TrainResult(self.out, self.state.step, self.state.epoch, self.state.best)

    def _max_steps_reached(self) -> bool:
        return bool(self.cfg.max_steps) and self.state.step >= self.cfg.max_steps

    def _barrier(self) -> None:
        if self.ps.distributed:
            dist.barrier()

    def _shipped_weights(self) -> AbstractContextManager[Any]:
        """The weights that are validated and saved as best/: the average when averaging, else the model's."""
        return self.ema.applied(self.model) if self.ema is not None else nullcontext(self.model)

    def _train_epoch(self, epoch: int) -> bool:
        """Train ``epoch`` from where the position is in it (or its start), writing a metrics record every
        ``log_every_steps`` steps and saving last/ every ``save_every_steps``; True when ``max_steps`` ended it."""
        cfg, state = self.cfg, self.state
        batches = epoch_batches(self.data.train.durations, self.plan, epoch)
        self.data.train.set_epoch(epoch)
        start = state.batch if epoch == state.epoch else 0
        bar = tqdm(total=len(batches), initial=start, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not (self.progress and self.ps.is_main), dynamic_ncols=True)
        window, done = _Window(), False
        self.ddp.train()
        for bi in range(start, len(batches)):
            lr, grad_norm, loss, audio_s = self._step(batches[bi], epoch)
            window.loss += loss
            window.n += len(batches[bi])
            window.audio_s += audio_s
            state.audio_s += audio_s
            bar.update(1)
            bar.set_postfix(loss=f"{loss / len(batches[bi]):.3f}", lr=f"{lr:.2e}")
            if state.step % cfg.log_every_steps == 0:
                self.metrics.write(window.record(state.step, epoch, lr, grad_norm))
                window = _Window()
            if self._max_steps_reached():
                done = True
                self._save_last(epoch, bi + 1)
                break
            if cfg.save_every_steps and state.step % cfg.save_every_steps == 0 and bi + 1 < len(batches):
                self._save_last(epoch, bi + 1)
        bar.close()
        return done

    def _step(self, global_batch: list[int], epoch: int) -> tuple[float, float, float, float]:
        """One optimizer step on this rank's shard of ``global_batch`` -> the learning rate, the gradient norm, and
        the global batch's summed loss and seconds of audio (summed over dp)."""
        cfg, device, state = self.cfg, self.device, self.state
        batch = self.data.train.batch(shard(global_batch, self.ps.dp_rank, self.dp))
        weight = 1.0
        if batch is None:  # every file of this rank's shard failed to load: contribute nothing
            batch, weight = self.data.train.batch([self.fallback]), 0.0
        assert batch is not None
        lr = lr_at(cfg.optim, state.step, epoch, self.total_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits, lengths = self.ddp(batch.feats.to(device), batch.lengths.to(device))  # (B, T', V), (B,)
        losses = ctc_loss(logits, lengths, batch.targets)
        loss = losses.sum() * weight / len(global_batch)  # the mean over the global batch, once dp sums it
        self.optimizer.zero_grad(set_to_none=True)
        (loss * dp_loss_scale(self.ps)).backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip or float("inf"))
        if torch.isfinite(gnorm):
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model, state.step)
        else:
            log.warning("step %d: non-finite gradient norm, update skipped", state.step)
        state.step += 1
        local = [float(losses.detach().sum()) * weight, batch.audio_seconds * weight]
        totals = all_reduce_sum(torch.tensor(local), self.ps.dp_group)
        return lr, float(gnorm), float(totals[0]), float(totals[1])

    def _end_epoch(self, epoch: int) -> None:
        """Validate the shipped weights, keep them as best/ when ``cfg.select`` says so, log and record the epoch,
        and save last/ at the start of the next."""
        state = self.state
        # audio_h: hours of training audio seen so far (after augmentation), the x axis of a learning curve
        record: dict[str, Any] = {"epoch": epoch + 1, "step": state.step, "audio_h": state.audio_s / 3600}
        with self._shipped_weights() as shipped:
            if self.data.dev is not None:
                record.update(self._validate(shipped, self.data.dev))
                key = "dev_cer" if self.cfg.data.lang == "zh" else "dev_wer"
                if state.best is None or record[key] < state.best[key] or self.cfg.select != "best":
                    state.best = record
                    if self.ps.is_main:
                        save_model_dir(self.out / "best", shipped, self.data.tokenizer, self.data.stats, self.cfg,
                                       extra_files={"metrics.json": json.dumps(record, indent=1)})
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) if isinstance(v, float) else v
                                              for k, v in record.items()})
        self.metrics.write(record)
        self._save_last(epoch + 1, 0)

    def _validate(self, model: DeepSpeech2, dev: SpeechDataset) -> dict[str, Any]:
        """Greedy-decoded dev WER, CER and utterance count, each rank decoding every dp-th utterance."""
        counts = evaluate_dataset(model, dev, list(range(self.ps.dp_rank, len(dev), self.dp)), self.device)
        counts = ErrorCounts.from_list(all_reduce_sum(torch.tensor(counts.as_list()), self.ps.dp_group).tolist())
        return {"dev_wer": counts.wer, "dev_cer": counts.cer, "dev_n": counts.n}

    def _save_last(self, epoch: int, batch: int) -> None:
        """Move the position to ``batch`` of ``epoch`` and save the resumable checkpoint last/ (rank 0)."""
        self.state.epoch, self.state.batch = epoch, batch
        if self.ps.is_main:
            save_model_dir(self.out / "last", self.model, self.data.tokenizer, self.data.stats, self.cfg,
                           train_state=capture_train_state(self.optimizer, dataclasses.asdict(self.state), self.ema))
        self._barrier()


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = True, progress: bool = True,
          parallel: ParallelState | None = None) -> TrainResult:
    """Train ``cfg`` into ``out_dir`` (``last/`` resumable checkpoint, ``best/`` the model ``cfg.select`` keeps: the
    lowest dev error, or the final epoch)."""
    ps = parallel or init_parallel()
    out = Path(out_dir)
    if ps.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with peer_failures_as_errors(ps):  # a dead or silent peer: one line, not a traceback per rank
        ckpt = _resume_point(out / "last", ps) if resume else None
        return _Run(_load_data(cfg, ps, ckpt), ps, out, ckpt, progress).fit()
