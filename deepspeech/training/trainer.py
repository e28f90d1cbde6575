"""The acoustic-model trainer: single process or ``torchrun`` data parallel through deepspeech.parallel.

CTC loss (DS2 section 3.1) averaged over the global batch, SortaGrad batches (section 3.4), SGD with Nesterov
momentum or AdamW, warm-up plus anneal/cosine learning-rate schedules, gradient-norm clipping, bf16 autocast on
GPUs, validation WER/CER each epoch with best-model selection, and resumable checkpoints: a run killed at any
point (SIGKILL included) restarts from its last checkpoint and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from deepspeech.checkpoint import (
    AcousticModel,
    CheckpointError,
    find_checkpoint,
    load_config,
    load_model_dir,
    load_train_state,
    read_weights,
    recover_checkpoint,
    save_model_dir,
    with_vocab,
)
from deepspeech.config import OptimConfig, TrainConfig
from deepspeech.data.dataset import SpeechDataset, select_utterances
from deepspeech.data.manifest import Utterance, read_manifest
from deepspeech.data.sampler import BatchPlan, epoch_batches, shard
from deepspeech.features import FeatureStats
from deepspeech.inference import evaluate_dataset
from deepspeech.metrics import ErrorCounts
from deepspeech.model import DeepSpeech2, ctc_loss
from deepspeech.parallel import (
    ParallelState,
    all_reduce_sum,
    dp_loss_scale,
    group_size,
    init_parallel,
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
    if ckpt is not None:
        return CharTokenizer.load(ckpt / "tokenizer.json"), FeatureStats.load(ckpt / "feature_stats.json")
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


def _rng_state() -> dict[str, torch.Tensor]:
    return {"torch": torch.get_rng_state()}


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


def _check_same_model(ckpt: Path, cfg: TrainConfig) -> None:
    saved = load_config(ckpt).model
    if saved != cfg.model:
        diff = [f"{f.name}={getattr(saved, f.name)!r} in the checkpoint, {getattr(cfg.model, f.name)!r} now"
                for f in dataclasses.fields(saved) if getattr(saved, f.name) != getattr(cfg.model, f.name)]
        raise CheckpointError(f"{ckpt}: the checkpoint's model differs from this run's ({'; '.join(diff)}); "
                              "resume with its config or train into another directory")


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
    device = ps.device
    dp, dp_rank = group_size(ps.dp_group), ps.dp_rank

    ckpt = _resume_point(out / "last", ps) if resume else None
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
    plan = BatchPlan(cfg.data.max_frames, cfg.data.max_batch, cfg.data.sortagrad, cfg.seed, min_batch=dp)

    torch.manual_seed(cfg.seed)
    model = DeepSpeech2(cfg.model, stats_group=ps.dp_group).to(device)
    optimizer = make_optimizer(model, cfg.optim)
    state: dict[str, Any] = {"epoch": 0, "batch": 0, "step": 0, "best": None, "audio_s": 0.0}
    if init is not None:
        model.load_state_dict(init.model.state_dict())  # stored float16 weights are cast to the model's float32
        log.info("fine-tuning from %s", cfg.init_from)
    ema = WeightEMA(model, cfg.optim.ema_decay) if cfg.optim.ema_decay else None
    if ckpt is not None:
        _check_same_model(ckpt, cfg)
        model.load_state_dict(read_weights(ckpt / "model.safetensors", model.state_dict(), device))
        ts = load_train_state(ckpt)
        optimizer.load_state_dict(ts["optimizer"])
        torch.set_rng_state(ts["rng"]["torch"])
        state.update(ts["trainer"])
        if ema is not None:
            if ts["ema"] is None:
                raise RuntimeError(f"{ckpt}: the config averages weights (optim.ema_decay) but the checkpoint has none")
            ema.load(ts["ema"])
        log.info("resumed from %s at epoch %d batch %d step %d", ckpt, state["epoch"], state["batch"],
                 state["step"])
    ddp = wrap_data_parallel(model, ps)
    n_params = model.num_parameters()
    log.info("%s: %d parameters, %d train / %d dev utterances, dp=%d", cfg.name, n_params, len(train_ds),
             len(dev_utts), dp)
    total_steps = cfg.max_steps or cfg.epochs * len(epoch_batches(train_ds.durations, plan, 0))
    metrics = _MetricsLog(out, ps.is_main)
    metrics.keep_until(state["step"])
    autocast = device.type == "cuda" and cfg.amp
    fallback = next(i for i in range(len(train_ds)) if train_ds.get(i) is not None)

    def shipped_weights() -> Any:
        """The weights that are validated and saved as best/: the average when averaging, else the model's."""
        return ema.applied(model) if ema is not None else nullcontext(model)

    def save(epoch: int, batch: int) -> None:
        state["epoch"], state["batch"] = epoch, batch
        if ps.is_main:
            save_model_dir(out / "last", model, tokenizer, stats, cfg, train_state={
                "optimizer": optimizer.state_dict(), "rng": _rng_state(),
                "trainer": dict(state), "ema": ema.shadow if ema is not None else None})
        if ps.distributed:
            dist.barrier()

    done = cfg.max_steps and state["step"] >= cfg.max_steps
    for epoch in range(state["epoch"], cfg.epochs):
        if done:
            break
        batches = epoch_batches(train_ds.durations, plan, epoch)
        train_ds.set_epoch(epoch)
        start = state["batch"] if epoch == state["epoch"] else 0
        bar = tqdm(total=len(batches), initial=start, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not (progress and ps.is_main), dynamic_ncols=True)
        window_loss, window_n, t0, window_audio = 0.0, 0, time.perf_counter(), 0.0
        ddp.train()
        for bi in range(start, len(batches)):
            global_batch = batches[bi]
            batch = train_ds.batch(shard(global_batch, dp_rank, dp))
            weight = 1.0
            if batch is None:  # every file of this rank's shard failed to load: contribute nothing
                batch, weight = train_ds.batch([fallback]), 0.0
            assert batch is not None
            lr = lr_at(cfg.optim, state["step"], epoch, total_steps)
            for g in optimizer.param_groups:
                g["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits, lengths = ddp(batch.feats.to(device), batch.lengths.to(device))
            losses = ctc_loss(logits, lengths, batch.targets)
            loss = losses.sum() * weight / len(global_batch)
            optimizer.zero_grad(set_to_none=True)
            (loss * dp_loss_scale(ps)).backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or float("inf"))
            if torch.isfinite(gnorm):
                optimizer.step()
                if ema is not None:
                    ema.update(model, state["step"])
            else:
                log.warning("step %d: non-finite gradient norm, update skipped", state["step"])
            state["step"] += 1
            local = [float(losses.detach().sum()) * weight, batch.audio_seconds * weight]
            stats_t = all_reduce_sum(torch.tensor(local), ps.dp_group)
            window_loss += float(stats_t[0])
            window_n += len(global_batch)
            window_audio += float(stats_t[1])
            state["audio_s"] += float(stats_t[1])
            bar.update(1)
            bar.set_postfix(loss=f"{float(stats_t[0]) / len(global_batch):.3f}", lr=f"{lr:.2e}")
            if state["step"] % cfg.log_every_steps == 0:
                dt = time.perf_counter() - t0
                metrics.write({"step": state["step"], "epoch": epoch, "loss": window_loss / max(window_n, 1),
                               "lr": lr, "grad_norm": float(gnorm), "audio_s_per_s": window_audio / dt})
                window_loss, window_n, t0, window_audio = 0.0, 0, time.perf_counter(), 0.0
            if cfg.max_steps and state["step"] >= cfg.max_steps:
                done = True
                save(epoch, bi + 1)
                break
            if cfg.save_every_steps and state["step"] % cfg.save_every_steps == 0 and bi + 1 < len(batches):
                save(epoch, bi + 1)
        bar.close()
        if done:
            break
        # audio_h: hours of training audio seen so far (after augmentation), the x axis of a learning curve
        record: dict[str, Any] = {"epoch": epoch + 1, "step": state["step"], "audio_h": state["audio_s"] / 3600}
        with shipped_weights() as shipped:
            if dev_ds is not None:
                counts = evaluate_dataset(shipped, dev_ds, list(range(dp_rank, len(dev_ds), dp)), device)
                counts = ErrorCounts.from_list(all_reduce_sum(torch.tensor(counts.as_list()), ps.dp_group).tolist())
                record.update({"dev_wer": counts.wer, "dev_cer": counts.cer, "dev_n": counts.n})
                key = "dev_cer" if cfg.data.lang == "zh" else "dev_wer"
                if state["best"] is None or record[key] < state["best"][key] or cfg.select != "best":
                    state["best"] = record
                    if ps.is_main:
                        save_model_dir(out / "best", shipped, tokenizer, stats, cfg,
                                       extra_files={"metrics.json": json.dumps(record, indent=1)})
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) if isinstance(v, float) else v
                                              for k, v in record.items()})
        metrics.write(record)
        save(epoch + 1, 0)
    if dev_ds is None and ps.is_main:  # no validation data: the last model is the best we know
        with shipped_weights() as shipped:
            save_model_dir(out / "best", shipped, tokenizer, stats, cfg)
    if ps.distributed:
        dist.barrier()
    return TrainResult(out, state["step"], state["epoch"], state["best"])

