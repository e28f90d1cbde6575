"""deepspeech.config and deepspeech.presets: presets build, JSON round trips, ``--set`` overrides and validation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from deepspeech.config import DataConfig, OptimConfig, TrainConfig, apply_overrides, from_dict, to_dict
from deepspeech.model.config import ConvSpec, ModelConfig
from deepspeech.model.ds2 import DeepSpeech2
from deepspeech.presets import PRESETS, get_preset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_builds_and_round_trips(name: str) -> None:
    cfg = get_preset(name)
    assert isinstance(cfg, TrainConfig) and cfg.name in (name, f"{name}-en")  # English models are named "-en"
    assert cfg.data.lang == ("zh" if name == "zh" or name.endswith("-zh") else "en")
    wire = json.loads(json.dumps(to_dict(cfg)))
    back = from_dict(TrainConfig, wire)
    assert back == cfg
    assert isinstance(back.model.convs, tuple) and all(isinstance(c, ConvSpec) for c in back.model.convs)
    assert all(isinstance(c.kernel, tuple) and isinstance(c.stride, tuple) for c in back.model.convs)
    assert isinstance(back.optim.betas, tuple)
    assert to_dict(back) == to_dict(cfg)


@pytest.mark.parametrize("name", ["digits-en", "streaming-en"])
def test_shipped_model_is_what_its_preset_trains(name: str) -> None:
    """The model card says ``deepspeech train --preset NAME`` made the shipped model: the preset must still say
    so. Fields added to the config after the model was trained are absent from its file and take their defaults,
    which leave training unchanged."""
    shipped = json.loads((Path(__file__).parents[1] / "models" / name / "config.json").read_text())
    assert from_dict(TrainConfig, shipped["config"]) == get_preset(name)


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="ds2-en"):
        get_preset("ds3")


def test_from_dict_rejects_unknown_keys_and_converts_ints() -> None:
    d = to_dict(TrainConfig())
    d["optim"]["lr"] = 1  # JSON has no float/int distinction
    cfg = from_dict(TrainConfig, d)
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    d["model"]["typo"] = 3
    with pytest.raises(ValueError, match="typo"):
        from_dict(TrainConfig, d)


def test_overrides_scalars_and_nested() -> None:
    base = TrainConfig()
    cfg = apply_overrides(base, ["optim.lr=0.01", "data.sortagrad=false", "epochs=3", "model.rnn_type=lstm",
                                 "name=exp1", "amp=0", "data.max_frames=123"])
    assert cfg.optim.lr == 0.01 and isinstance(cfg.optim.lr, float)
    assert cfg.data.sortagrad is False and cfg.amp is False
    assert cfg.epochs == 3 and cfg.model.rnn_type == "lstm" and cfg.name == "exp1" and cfg.data.max_frames == 123
    # everything else untouched; the base is frozen and unchanged
    assert dataclasses.replace(cfg, optim=base.optim, data=base.data, epochs=base.epochs, model=base.model,
                               name=base.name, amp=base.amp) == base
    assert base.optim.lr == 3e-4 and base.data.sortagrad is True
    for text, value in [("true", True), ("YES", True), ("1", True), ("on", True), ("no", False), ("Off", False)]:
        assert apply_overrides(base, [f"data.sortagrad={text}"]).data.sortagrad is value
    assert apply_overrides(base, []) == base
    assert apply_overrides(base, ["epochs=2", "epochs=5"]).epochs == 5  # later wins
    assert apply_overrides(base, ["name=a=b"]).name == "a=b"  # split on the first '=' only


def test_overrides_json_valued_fields() -> None:
    cfg = apply_overrides(TrainConfig(), ["optim.betas=[0.8, 0.9]",
                                          'model.convs=[{"channels": 4, "kernel": [5, 3], "stride": [2, 1]}]'])
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.model.convs == (ConvSpec(4, (5, 3), (2, 1)),)


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ValueError, match="unknown config key 'optim.lrate'") as e:
        apply_overrides(TrainConfig(), ["optim.lrate=1"])
    for name in (f.name for f in dataclasses.fields(OptimConfig)):
        assert name in str(e.value)
    with pytest.raises(ValueError, match="epochs, max_steps"):
        apply_overrides(TrainConfig(), ["epoch=1"])


def test_retired_options_are_dropped_when_neutral_and_refused_otherwise() -> None:
    """Options removed in issue 31 in an older config: dropped at the value that changes nothing, else one line
    naming the option; ``--set`` of one says it was removed."""
    d = to_dict(TrainConfig())
    old = json.loads(json.dumps(d))
    old.update(members=1)
    old["optim"]["cycles"] = 1
    old["features"].update(lifter=0, speech_range_db=30.0)
    old["augment"].update(eq_db=0.0, pad_s=[0.0, 0.0], pad_floor_db=[-60.0, -30.0])
    assert from_dict(TrainConfig, old) == TrainConfig()
    assert old["optim"]["cycles"] == 1  # the caller's data is not changed
    for section, key, value in [("", "members", 3), ("optim", "cycles", 2), ("features", "lifter", 40),
                                ("augment", "eq_db", 6.0), ("augment", "pad_s", [0.0, 0.3]),
                                ("", "select", "snapshots"), ("features", "utterance_norm", "level")]:
        bad = json.loads(json.dumps(old))
        (bad[section] if section else bad)[key] = value
        with pytest.raises(ValueError, match="was removed in issue 31; this model needs an older release"):
            from_dict(TrainConfig, bad)
    with pytest.raises(ValueError, match="'optim.cycles' was removed in issue 31"):
        apply_overrides(TrainConfig(), ["optim.cycles=3"])


@pytest.mark.parametrize("override,message", [
    ("epochs=three", "bad value for 'epochs'"),
    ("epochs=2.5", "bad value for 'epochs'"),
    ("optim.lr=fast", "bad value for 'optim.lr'"),
    ("data.sortagrad=maybe", "bad value for 'data.sortagrad'"),
    ("optim.betas=[0.9", "bad value for 'optim.betas'"),
    ("epochs", "not of the form key=value"),
    ("epochs.x=1", "epochs is not a section"),
])
def test_bad_values(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_overrides(TrainConfig(), [override])


@pytest.mark.parametrize("override", [
    "model.rnn_layers=9", "model.rnn_layers=0", "model.rnn_type=transformer", "model.lookahead=5",
    "model.convs=[]", "data.lang=fr", "data.max_batch=0", "data.min_duration_s=60", "optim.name=lamb",
    "optim.schedule=step", "optim.lr=0", "optim.lr=-1", "optim.lr=nan", "optim.lr=inf", "optim.anneal=nan",
    "data.max_duration_s=nan", "epochs=0", "log_every_steps=0", "features.window=kaiser",
])
def test_validation_rejects(override: str) -> None:
    with pytest.raises(ValueError):
        apply_overrides(TrainConfig(), [override])


def test_direct_construction_validates() -> None:
    with pytest.raises(ValueError):
        DataConfig(min_duration_s=5.0, max_duration_s=1.0)
    with pytest.raises(ValueError):
        OptimConfig(lr=float("nan"))
    with pytest.raises(ValueError):
        ModelConfig(bidirectional=True, lookahead=3)


def test_ds2_parameter_count() -> None:
    cfg = get_preset("ds2-en")
    assert cfg.model.rnn_layers == 7 and cfg.model.bidirectional and len(cfg.model.convs) == 2
    with torch.device("meta"):  # shapes only: no 400 MB of initialisation
        model = DeepSpeech2(cfg.model)
    n = sum(p.numel() for p in model.parameters())
    assert 90e6 <= n <= 110e6, n
