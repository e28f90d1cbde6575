"""Quantized model directories (deepspeech.model.quantize): export -> load -> transcribe, log-probabilities near the
float model's, the batched streaming step equal to the offline forward, corrupted directories refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from deepspeech.checkpoint import WEIGHTS, CheckpointError, load_model_dir, quantize_model_dir
from deepspeech.frontend.front_end import FrontEnd
from deepspeech.model.ds2 import DeepSpeech2
from deepspeech.model.quantize import Bf16Linear, Int8GRU, Int8Linear, QuantizedDeepSpeech2
from tests.conftest import FSDD, REPO, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

STREAMING = REPO / "models" / "streaming-en"

# Quantized against float32, in probabilities (log-probabilities of near-impossible symbols, p ~ 1e-9, move by
# tenths in either precision and carry no decision): int8 rounds each weight row to 1/254 of its largest value and
# each product's input to 1/255 of its range per call (and, on CPUs with native bf16, its convolutions compute in
# bf16); bf16 keeps 8 bits of mantissa. Observed over 125 FSDD test utterances: max |dp| 0.062 (int8) and 0.017
# (bf16), the greedy symbol differing on 0.14% and 0.05% of frames (at near-ties). The bounds leave ~2-3x room and
# still catch a wrong scale, a swapped gate or a lost bias (those move probabilities by tenths on most frames and
# change the greedy path).
PROB_ATOL = {"int8": 0.15, "bf16": 0.05}
MIN_GREEDY_AGREEMENT = 0.98  # share of frames whose greedy symbol matches float32's
# Stream against offline for one quantized model, in probabilities: bf16's step keeps its forward's arithmetic, the
# same products on the same rounded inputs but for the recurrent layers' batch norms (one fused multiply-add in the
# step: an occasional other bfloat16 rounding of a GRU input): observed max |dp| 1e-4 on the 8 here, 0.0017 over 64
# FSDD test utterances (AMX). int8 quantises activations per call over all the call's rows, so a batch of other rows
# (streaming chunks against whole utterances) gives other activation scales, and its step folds batch norms into
# its bfloat16 convolutions: observed max |dp| 0.015 on the 8 here, 0.057 over 64 (0.049 over 63 before the
# folding). 0.1 leaves ~2x room; a dropped, repeated or shifted frame moves probabilities by tenths on many frames
# (neighbouring frames differ by up to 1).
STREAM_ATOL = {"int8": 0.1, "bf16": 0.02}


def fsdd_batch(am, n: int = 8) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """n FSDD test utterances (every 37th: speakers and digits mixed) -> (B, T, F) features, (B,) lengths, texts."""
    fe = FrontEnd(am.config.features, am.stats)
    rows = [json.loads(line) for line in (FSDD / "test.jsonl").read_text().splitlines()][::37][:n]
    feats = [fe.features(fe.load(FSDD / r["audio"]))[0] for r in rows]
    lengths = torch.tensor([f.shape[0] for f in feats])
    return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), lengths, [r["audio"] for r in rows]


def scheme_of(quant_dir: Path) -> str:
    """The scheme the fixture exported ``quant_dir`` with (its folder is q-SCHEME-N)."""
    return quant_dir.parent.name.split("-")[1]


def log_probs(model: DeepSpeech2, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        y, out = model(x, lengths)
    return y.log_softmax(-1), out


@pytest.fixture(scope="module")
def float_am():
    return load_model_dir(STREAMING)


@pytest.fixture(scope="module", params=["int8", "bf16"])
def quant_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """streaming-en exported with ``deepspeech export --quantize`` (the CLI, a model card over 3 utterances)."""
    out = tmp_path_factory.mktemp(f"q-{request.param}-") / "model"
    manifest = out.parent / "eval.jsonl"
    rows = [json.loads(line) for line in (FSDD / "dev.jsonl").read_text().splitlines()][:3]
    manifest.write_text("".join(json.dumps({**r, "audio": str(FSDD / r["audio"])}) + "\n" for r in rows))
    r = run_cli("export", "--model", str(STREAMING), "--to", str(out), "--command-line", "test",
                "--eval", f"fsdd={manifest}", "--quantize", request.param, "--no-progress",
                env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_quantized_dir_format(quant_dir: Path) -> None:
    """safetensors + JSON: the scheme in config.json, int8 rows with per-row scales or bf16 weights."""
    scheme = scheme_of(quant_dir)
    cfg = json.loads((quant_dir / "config.json").read_text())
    assert cfg["quantization"] == {"scheme": scheme}
    tensors = load_file(str(quant_dir / WEIGHTS))
    if scheme == "int8":
        assert tensors["rnns.0.rnn.ih.weight_int8"].dtype == torch.int8
        assert tensors["rnns.0.rnn.ih.scale"].shape == (3 * 256,)
        assert tensors["fc.weight_int8"].dtype == torch.int8
        assert "fc.weight" not in tensors
    else:
        assert tensors["rnns.0.rnn.hh.weight"].dtype == torch.bfloat16
        assert tensors["convs.0.conv.weight"].dtype == torch.bfloat16
        assert tensors["rnns.1.bn.running_var"].dtype == torch.float32
    assert not list(quant_dir.glob("*.pt")) and not list(quant_dir.glob("*.pkl"))
    assert (quant_dir / WEIGHTS).stat().st_size < 0.6 * (STREAMING / WEIGHTS).stat().st_size


def test_load_and_transcribe(quant_dir: Path) -> None:
    """The CLI's transcribe runs the quantized directory like any other and reads FSDD digits."""
    am = load_model_dir(quant_dir)
    rnn = am.model.rnns[0].rnn
    assert isinstance(rnn, Int8GRU)
    assert isinstance(am.model, QuantizedDeepSpeech2) and am.model.scheme == scheme_of(quant_dir)
    linear = Int8Linear if scheme_of(quant_dir) == "int8" else Bf16Linear
    assert isinstance(rnn.hh, linear) and isinstance(am.model.fc, linear)
    files = [FSDD / "audio" / f"{d}_jackson_0.flac" for d in (3, 7)]
    r = run_cli("transcribe", "--model", str(quant_dir), "--decoder", "greedy", "--no-progress",
                *map(str, files), env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    texts = [line.split("\t")[1] for line in r.stdout.strip().splitlines()]
    assert texts == ["three", "seven"]


def test_log_probs_close_to_float(quant_dir: Path, float_am) -> None:
    """Offline forward on real speech: probabilities within PROB_ATOL of float32's, nearly the same greedy path."""
    q = load_model_dir(quant_dir)
    x, lengths, _ = fsdd_batch(float_am)
    ref, out = log_probs(float_am.model, x, lengths)
    got, out_q = log_probs(q.model, x, lengths)
    assert torch.equal(out, out_q)
    valid = torch.arange(ref.shape[1])[None, :] < out[:, None]
    dp = (got.exp() - ref.exp()).abs()[valid]
    assert dp.max().item() <= PROB_ATOL[scheme_of(quant_dir)]
    agree = (got.argmax(-1) == ref.argmax(-1))[valid].float().mean().item()
    assert agree >= MIN_GREEDY_AGREEMENT


def test_batched_step_equals_offline(quant_dir: Path, float_am) -> None:
    """Eight streams stepped together in chunks of 7 frames (all rows in one ``step``; rows finishing at other
    calls) give the quantized model's own offline log-probabilities."""
    model = load_model_dir(quant_dir).model
    x, lengths, _ = fsdd_batch(float_am)
    offline, out = log_probs(model, x, lengths)
    b, chunk = x.shape[0], 7
    state, pieces = model.initial_state(b), [[] for _ in range(b)]
    with torch.no_grad():
        for pos in range(0, x.shape[1], chunk):
            counts = [max(0, min(chunk, int(n) - pos)) for n in lengths]
            final = [pos < int(n) <= pos + chunk for n in lengths]
            feats = torch.nn.functional.pad(x[:, pos: pos + chunk], (0, 0, 0, chunk - x[:, pos: pos + chunk].shape[1]))
            logits, n_out, state = model.step(feats, counts, state, final)
            assert logits.dtype == torch.float32
            for i in range(b):
                pieces[i].append(logits[i, : n_out[i]])
    for i in range(b):
        streamed = torch.cat(pieces[i]).log_softmax(-1)
        assert streamed.shape == (int(out[i]), offline.shape[2])
        dp = (streamed.exp() - offline[i, : int(out[i])].exp()).abs().max().item()
        assert dp <= STREAM_ATOL[scheme_of(quant_dir)]


def test_int8_gru_aten_loop_equals_python_loop() -> None:
    """A dense input runs ATen's dynamic quantized GRU (its time loop in C++); a packed one the Python loop. Same
    int8 products, same activation scales (one input product over all frames, one recurrent product per frame), same
    gate equations: equal to float32 rounding (observed <= 3e-7)."""
    torch.manual_seed(0)
    gru = Int8GRU.from_gru(torch.nn.GRU(24, 16, batch_first=True))
    x, h0 = torch.randn(5, 7, 24), 0.5 * torch.randn(1, 5, 16)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.full((5,), 7), batch_first=True)
    with torch.no_grad():
        y, h = gru(x, h0)
        y_ref, h_ref = gru(packed, h0)
    y_ref, _ = torch.nn.utils.rnn.pad_packed_sequence(y_ref, batch_first=True)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=0)


def test_corrupted_dir_one_line(quant_dir: Path, tmp_path: Path) -> None:
    """A quantized config over float weights, an unknown scheme, a non-positive scale: one clear line each."""
    bad = tmp_path / "bad"
    shutil.copytree(quant_dir, bad)
    shutil.copy2(STREAMING / WEIGHTS, bad / WEIGHTS)  # float32 weights under a quantized config
    with pytest.raises(CheckpointError, match="do not match config.json") as e:
        load_model_dir(bad)
    assert "\n" not in str(e.value)
    r = run_cli("transcribe", "--model", str(bad), str(FSDD / "audio" / "3_jackson_0.flac"))
    assert r.returncode != 0 and "do not match config.json" in r.stderr
    assert "Traceback" not in r.stderr

    shutil.copy2(quant_dir / WEIGHTS, bad / WEIGHTS)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["quantization"] = {"scheme": "int4"}
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown quantization scheme 'int4'") as e:
        load_model_dir(bad)
    assert "\n" not in str(e.value)

    if scheme_of(quant_dir) == "int8":
        (bad / "config.json").write_text((quant_dir / "config.json").read_text())
        tensors = load_file(str(quant_dir / WEIGHTS))
        tensors["rnns.1.rnn.hh.scale"][5] = -1.0
        save_file(tensors, str(bad / WEIGHTS))
        with pytest.raises(CheckpointError, match="rnns.1.rnn.hh.scale holds scales that are not positive"):
            load_model_dir(bad)


def test_quantizing_twice_refused(quant_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="already quantized"):
        quantize_model_dir(quant_dir, tmp_path / "again", "int8")
