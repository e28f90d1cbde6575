"""Loading model and checkpoint directories that were damaged or crafted (issue 29): nothing in them is unpickled
or executed, nothing is allocated before the weights' header matches the config, and every fault is one clear
error line (CheckpointError / ShardedCheckpointError), never a traceback, a silent partial load or empty output.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import deepspeech.checkpoint as ckpt
from deepspeech.checkpoint import CheckpointError, load_model_dir
from deepspeech.model.ds2 import DeepSpeech2
from deepspeech.parallel import ParallelDims, ParallelState
from deepspeech.parallel.sharded_checkpoint import ShardedCheckpointError, latest_checkpoint, step_dir
from lm.gpt import GPTConfig, gpt_tiny
from lm.train import LMTrainConfig, train
from tests.conftest import REPO, run_cli
from tests.test_parallel_tp import TEXT

MODEL = REPO / "models" / "digits-en"
ONE = ParallelState(ParallelDims())


def one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg, msg
    return msg


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(MODEL, tmp_path / "model"))


def edit_config(d: Path, fn: Callable[[dict[str, Any]], None]) -> None:
    raw = json.loads((d / "config.json").read_text())
    fn(raw)
    (d / "config.json").write_text(json.dumps(raw))


# --- acoustic model directories --------------------------------------------------------------------------------------

def test_a_config_asking_for_a_huge_network_is_refused_before_it_is_built(model_copy: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """rnn_hidden 12000 beside a 6 MB weights file (issue 29: 3.7 GB allocated before any check): refused from the
    header, and no network is built anywhere but on the meta device (the spy fails any other construction)."""
    edit_config(model_copy, lambda raw: raw["config"]["model"].update(rnn_hidden=12000))

    class MetaOnly(DeepSpeech2):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            assert torch.get_default_device().type == "meta", "a network was allocated before the header check"
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(ckpt, "DeepSpeech2", MetaOnly)
    with pytest.raises(CheckpointError) as e:
        load_model_dir(model_copy)
    assert "do not match config.json" in one_line(e)
    assert re.search(r"rnns.0.rnn.weight_ih_l0 has shape \[576, \d+\] in the file, \[36000, \d+\] in the model",
                     one_line(e))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "huge-header", "empty", "renamed", "dropped"])
def test_damaged_or_foreign_weights_are_one_line_errors(model_copy: Path, damage: str) -> None:
    w = model_copy / "model.safetensors"
    data = w.read_bytes()
    if damage == "truncated":
        w.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        w.write_bytes(os.urandom(4096))
    elif damage == "huge-header":
        w.write_bytes((10**15).to_bytes(8, "little") + data[8:])
    elif damage == "empty":
        w.write_bytes(b"")
    else:
        t = load_file(str(w))
        t["fc.bias2" if damage == "renamed" else "unused"] = t.pop("fc.bias")
        if damage == "dropped":
            del t["unused"]
        save_file(t, str(w))
    with pytest.raises(CheckpointError) as e:
        load_model_dir(model_copy)
    msg = one_line(e)
    assert "model.safetensors" in msg
    if damage in ("renamed", "dropped"):
        assert "missing fc.bias" in msg and ("unexpected fc.bias2" in msg or damage == "dropped")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(model_copy: Path, value: float) -> None:
    """NaN/inf weights used to load silently and transcribe everything as empty text."""
    w = model_copy / "model.safetensors"
    t = load_file(str(w))
    t["rnns.1.rnn.weight_hh_l0"][3, 4] = value
    save_file(t, str(w))
    with pytest.raises(CheckpointError, match="rnns.1.rnn.weight_hh_l0 holds NaN or infinite values"):
        load_model_dir(model_copy)
    stats = json.loads((MODEL / "feature_stats.json").read_text())
    stats["std"][0] = 0.0
    shutil.copy(MODEL / "model.safetensors", w)
    (model_copy / "feature_stats.json").write_text(json.dumps(stats))
    with pytest.raises(CheckpointError, match="feature_stats.json: malformed feature statistics"):
        load_model_dir(model_copy)


CONFIG_FAULTS: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("unknown-field", lambda r: r["config"]["model"].update(rnn_hiden=64), r"model: unknown field\(s\) rnn_hiden"),
    ("unknown-top", lambda r: r.update(extra=1), r"unknown field\(s\) extra"),
    ("string-int", lambda r: r["config"]["model"].update(rnn_hidden="192"), "model.rnn_hidden: expected int"),
    ("float-int", lambda r: r["config"]["model"].update(rnn_layers=2.5), "model.rnn_layers: expected int"),
    ("string-bool", lambda r: r["config"]["model"].update(bidirectional="yes"), "model.bidirectional: expected bool"),
    ("object-list", lambda r: r["config"]["model"].update(convs={"a": 1}), "model.convs: expected a list"),
    ("tuple-length", lambda r: r["config"]["model"]["convs"][0].update(kernel=[41]),
     r"model.convs\[0\].kernel: expected 2 values"),
    ("not-object", lambda r: r["config"].update(features=[]), "features: expected an object"),
    ("invalid-value", lambda r: r["config"]["model"].update(rnn_layers=99), "1 to 7 recurrent layers"),
    ("no-config", lambda r: r.pop("config"), "expected an object with format_version and config"),
]


@pytest.mark.parametrize(("fault", "want"), [(c[1], c[2]) for c in CONFIG_FAULTS], ids=[c[0] for c in CONFIG_FAULTS])
def test_malformed_config_json_is_one_line_error(model_copy: Path, fault: Callable[[dict[str, Any]], Any],
                                                 want: str) -> None:
    edit_config(model_copy, fault)
    with pytest.raises(CheckpointError, match=want) as e:
        load_model_dir(model_copy)
    assert "config.json" in one_line(e)


def test_options_retired_in_issue_31_load_at_their_neutral_values(model_copy: Path) -> None:
    """models/digits-en/config.json was written with the options retired in issue 31, each at the value that
    changes nothing: loading drops them, and the model is the one a config without them describes."""
    raw = json.loads((MODEL / "config.json").read_text())["config"]
    assert raw["members"] == 1 and raw["features"]["lifter"] == 0 and raw["augment"]["pad_s"] == [0.0, 0.0]
    am = load_model_dir(model_copy)
    assert am.config.features.warp_search == (0.9, 0.95, 1.0, 1.05, 1.1) and am.config.features.trim_db == 40.0

    def neutral(r: dict[str, Any]) -> None:  # any value of the options read only by retired ones is neutral too
        r["config"]["features"]["speech_range_db"] = 12.5
        r["config"]["augment"].update(pad_floor_db=[-70.0, -10.0], pad_s=[0, 0], eq_db=0)
        r["config"]["optim"]["cycles"] = 1
    edit_config(model_copy, neutral)
    assert ckpt.load_config(model_copy) == am.config


@pytest.mark.parametrize(("key", "value"), [
    ("members", 2), ("optim.cycles", 3), ("features.lifter", 40), ("augment.eq_db", 6.0),
    ("augment.pad_s", [-0.03, 0.3]), ("select", "snapshots"), ("features.utterance_norm", "level"),
    ("features.utterance_norm", "speech_mean"), ("features.utterance_norm", "meanvar"),
])
def test_options_retired_in_issue_31_refuse_any_other_value(model_copy: Path, key: str, value: Any) -> None:
    *section, name = key.split(".")
    edit_config(model_copy, lambda r: (r["config"][section[0]] if section else r["config"]).update({name: value}))
    with pytest.raises(CheckpointError, match=re.escape(key) + ".* was removed in issue 31; this model needs an "
                       "older release") as e:
        load_model_dir(model_copy)
    assert "config.json" in one_line(e)


def test_config_json_that_is_not_json_and_a_broken_tokenizer(model_copy: Path) -> None:
    (model_copy / "config.json").write_text('{"format_version": 1, "config": {')
    with pytest.raises(CheckpointError, match="config.json: not valid JSON") as e:
        load_model_dir(model_copy)
    one_line(e)
    (model_copy / "config.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model_dir(model_copy)
    shutil.copy(MODEL / "config.json", model_copy / "config.json")
    (model_copy / "tokenizer.json").write_text('{"lang": "en"}')
    with pytest.raises(CheckpointError, match="tokenizer.json: malformed"):
        load_model_dir(model_copy)


def test_a_damaged_hanzi_lm_in_a_model_directory_is_a_checkpoint_error(tmp_path: Path) -> None:
    zh = Path(shutil.copytree(REPO / "models" / "sentences-zh", tmp_path / "zh"))
    binary = zh / "hanzi" / "lm.binary"
    binary.write_bytes(binary.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="hanzi/lm.binary: damaged KenLM model") as e:
        load_model_dir(zh)
    one_line(e)
    binary.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="not a KenLM model"):
        load_model_dir(zh)
    shutil.copy(REPO / "models" / "sentences-zh" / "hanzi" / "lm.binary", binary)
    (zh / "hanzi" / "lexicon.json").write_text('{"ni3": [["你"]]}')
    with pytest.raises(CheckpointError, match="malformed lexicon.json"):
        load_model_dir(zh)


def test_cli_reports_a_damaged_model_in_one_line(model_copy: Path) -> None:
    t = load_file(str(model_copy / "model.safetensors"))
    t["fc.weight"][0, 0] = float("nan")
    save_file(t, str(model_copy / "model.safetensors"))
    audio = REPO / "data" / "fsdd" / "audio" / "0_theo_0.flac"
    res = run_cli("transcribe", "--model", str(model_copy), str(audio))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "fc.weight holds NaN or infinite values" in res.stderr


# --- GPT LM checkpoints (torch.distributed.checkpoint) ---------------------------------------------------------------

SMALL = GPTConfig(layers=2, hidden=32, heads=4, seq_len=16)


def lm_checkpoint(root: Path, model: GPTConfig = SMALL, text: str = TEXT) -> Path:
    train(LMTrainConfig(model=model, steps=1, batch_size=2, save_dir=str(root)), ONE, text)
    return step_dir(root, 1)


@pytest.fixture(scope="module")
def lm_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lm_checkpoint(tmp_path_factory.mktemp("lm"))


def resume(src: Path, model: GPTConfig = SMALL, text: str = TEXT) -> list[dict[str, Any]]:
    return train(LMTrainConfig(model=model, steps=2, batch_size=2, load_dir=str(src)), ONE, text)[2]


class RunsCode:
    """Unpickling this calls ``fn(*args)``: what a crafted .metadata would do."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args


def payloads(marker: Path) -> dict[str, bytes]:
    return {
        "os.system": pickle.dumps(RunsCode(os.system, f"touch {marker}")),
        "builtins.exec": pickle.dumps(RunsCode(exec, f"open({str(marker)!r}, 'w').close()")),
        "dotted-name": pickle.dumps(RunsCode(Path.touch, marker), protocol=4),  # pathlib "PosixPath.touch"
        "torch.save": pickle.dumps(RunsCode(torch.save, {}, str(marker))),
    }


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "dotted-name", "torch.save", "bytes-entry"])
def test_a_metadata_pickle_cannot_run_code(tmp_path: Path, lm_ckpt: Path, kind: str) -> None:
    """`lm train --load DIR` unpickled DIR/.metadata with plain pickle: a crafted one ran code. Each payload is
    refused with one error and its marker file is never written. "bytes-entry" is a well-formed DCP metadata whose
    step entry is a bytes item: DCP would torch.load(weights_only=False) its data, here a payload too."""
    src = Path(shutil.copytree(lm_ckpt, tmp_path / "ckpt"))
    marker = tmp_path / "pwned"
    if kind == "bytes-entry":
        from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

        md = pickle.loads((src / ".metadata").read_bytes())  # the test's own, trusted file
        data = src / "__0_0.distcp"
        payload = pickle.dumps(RunsCode(os.system, f"touch {marker}"))
        offset = data.stat().st_size
        with open(data, "ab") as f:
            f.write(payload)
        md.state_dict_metadata["train.step"] = BytesStorageMetadata()
        info = md.storage_data.pop(next(k for k in md.storage_data if k.fqn == "train.step"))
        md.storage_data[MetadataIndex("train.step")] = replace(info, offset=offset, length=len(payload))
        buf = io.BytesIO()
        pickle.dump(md, buf)
        (src / ".metadata").write_bytes(buf.getvalue())
    else:
        (src / ".metadata").write_bytes(payloads(marker)[kind])
    with pytest.raises(ShardedCheckpointError, match="refusing") as e:
        resume(src)
    one_line(e)
    assert not marker.exists()


def test_cli_lm_train_load_refuses_a_crafted_metadata(tmp_path: Path) -> None:
    from deepspeech.cli import main

    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    src = lm_checkpoint(tmp_path / "ck", gpt_tiny())
    marker = tmp_path / "pwned"
    (src / ".metadata").write_bytes(payloads(marker)["os.system"])
    args = ["lm", "train", "--preset", "gpt-tiny", "--steps", "2", "--batch-size", "2", "--text", str(text)]
    assert main([*args, "--load", str(src)]) == 2
    assert not marker.exists()


def test_lm_resume_refuses_a_checkpoint_of_another_model(lm_ckpt: Path) -> None:
    """Issue 29: a 4-layer checkpoint loaded into a 2-layer model without a word; here the other way round too."""
    with pytest.raises(ShardedCheckpointError, match="checkpoint has layers=2, this model has layers=4") as e:
        resume(lm_ckpt, replace(SMALL, layers=4))
    one_line(e)
    with pytest.raises(ShardedCheckpointError, match="checkpoint has hidden=32, this model has hidden=64"):
        resume(lm_ckpt, replace(SMALL, hidden=64))
    with pytest.raises(ShardedCheckpointError, match="checkpoint has tie_embeddings=True, this model has "
                                                "tie_embeddings=False"):
        resume(lm_ckpt, replace(SMALL, tie_embeddings=False))
    assert [r["step"] for r in resume(lm_ckpt)] == [2]  # the matching model resumes


def test_lm_resume_refuses_missing_unexpected_or_reshaped_entries(tmp_path: Path, lm_ckpt: Path) -> None:
    """Past the config check (config.json edited to agree), the entries themselves must fit: DCP alone ignores
    unexpected ones."""
    four = Path(shutil.copytree(lm_ckpt, tmp_path / "four"))
    meta = json.loads((four / "config.json").read_text())
    meta["config"]["model"]["layers"] = 4
    (four / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ShardedCheckpointError, match="does not fit this model: missing model.layers.2"):
        resume(four, replace(SMALL, layers=4))
    untied = lm_checkpoint(tmp_path / "untied", replace(SMALL, tie_embeddings=False))
    meta = json.loads((untied / "config.json").read_text())
    meta["config"]["model"]["tie_embeddings"] = True
    (untied / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ShardedCheckpointError, match="unexpected model.output.weight"):
        resume(untied)
    with pytest.raises(ShardedCheckpointError, match=r"model.embedding.weight has shape \[\d+, 32\] in the checkpoint"):
        resume(lm_ckpt, text=TEXT + "0123456789XYZ!?")  # another text: another vocabulary


def test_an_unfinished_lm_save_is_not_a_checkpoint(tmp_path: Path, lm_ckpt: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(lm_ckpt, step_dir(root, 1))
    shutil.copytree(lm_ckpt, step_dir(root, 2))
    (step_dir(root, 2) / "config.json").unlink()  # written last: the save of step 2 did not finish
    assert latest_checkpoint(root) == step_dir(root, 1)
    with pytest.raises(ShardedCheckpointError, match="incomplete checkpoint"):
        latest_checkpoint(step_dir(root, 2))
