"""The trainer's resumable state through deepspeech.checkpoint: what :func:`capture_train_state` saves,
:func:`restore_training_checkpoint` puts back exactly, and it refuses a checkpoint that cannot continue this run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from deepspeech.checkpoint import CheckpointError, capture_train_state, restore_training_checkpoint, save_model_dir
from deepspeech.config import TrainConfig
from deepspeech.frontend.features import FeatureStats
from deepspeech.model.config import ConvSpec, ModelConfig
from deepspeech.model.ds2 import DeepSpeech2
from deepspeech.text import english_tokenizer
from deepspeech.training.ema import WeightEMA
from deepspeech.training.trainer import make_optimizer

CFG = TrainConfig(model=ModelConfig(convs=(ConvSpec(2, (5, 3), (2, 2)),), rnn_layers=1, rnn_hidden=4,
                                    n_features=9))
STATS = FeatureStats((0.0,) * 9, (1.0,) * 9)


def _run(seed: int, cfg: TrainConfig = CFG) -> tuple[DeepSpeech2, torch.optim.Optimizer, WeightEMA]:
    """A model, optimizer and EMA after one step from ``seed``: every part of the state depends on it."""
    torch.manual_seed(seed)
    model = DeepSpeech2(cfg.model)
    opt = make_optimizer(model, dataclasses.replace(cfg.optim, name="adamw"))
    ema = WeightEMA(model, 0.9)
    model(torch.randn(2, 20, 9), torch.tensor([20, 15]))[0].sum().backward()
    opt.step()
    ema.update(model, 0)
    return model, opt, ema


def test_restore_puts_back_what_capture_saved(tmp_path: Path) -> None:
    model, opt, ema = _run(0)
    trainer = {"epoch": 1, "batch": 2, "step": 3, "best": None, "audio_s": 4.5}
    rng = torch.get_rng_state()
    save_model_dir(tmp_path / "last", model, english_tokenizer(), STATS, CFG,
                   train_state=capture_train_state(opt, trainer, ema))
    torch.manual_seed(99)  # the restore must bring the saved RNG back
    model2, opt2, ema2 = _run(1)
    assert restore_training_checkpoint(tmp_path / "last", model2, opt2, ema2, "cpu") == trainer
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in model.state_dict().items():
        assert torch.equal(model2.state_dict()[k], v), k
        assert torch.equal(ema2.shadow[k], ema.shadow[k]), k
    a, b = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[i][n], b[i][n]) for i in a for n in a[i])


def test_restore_refuses_another_model_or_missing_averaged_weights(tmp_path: Path) -> None:
    model, opt, _ = _run(0)
    save_model_dir(tmp_path / "last", model, english_tokenizer(), STATS, CFG,
                   train_state=capture_train_state(opt, {"step": 1}, None))
    wider = dataclasses.replace(CFG, model=dataclasses.replace(CFG.model, rnn_hidden=8))
    other, other_opt, _ = _run(0, wider)
    with pytest.raises(CheckpointError, match="rnn_hidden=4 in the checkpoint, 8 now"):
        restore_training_checkpoint(tmp_path / "last", other, other_opt, None, "cpu")
    model2, opt2, ema2 = _run(1)
    with pytest.raises(RuntimeError, match="averages weights"):
        restore_training_checkpoint(tmp_path / "last", model2, opt2, ema2, "cpu")
    assert restore_training_checkpoint(tmp_path / "last", model2, opt2, None, "cpu") == {"step": 1}
