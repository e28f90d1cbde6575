"""ONNX export (deepspeech.model.onnx_export, ``deepspeech export --onnx``): onnxruntime's log-probabilities equal
PyTorch's on real FSDD features, over batch and time sizes other than the traced ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deepspeech.checkpoint import load_model_dir
from deepspeech.frontend.front_end import FrontEnd
from deepspeech.model.onnx_export import ONNX_FILE, export_onnx, portable_copy
from deepspeech.model.quantize import QuantConfig, quantize
from tests.conftest import FSDD, REPO, run_cli

ort = pytest.importorskip("onnxruntime")  # the [onnx] extra (installed by scripts/setup.sh with dev)

pytestmark = pytest.mark.usefixtures("one_thread")

# float32 throughout; onnxruntime's GRU, convolutions and GEMMs sum in other orders than oneDNN and the native
# kernels: observed max 3.3e-5 (streaming-en) and 7.6e-6 (digits-en) on log-probabilities of magnitude <= 25.
# The bound, 1e-4, is the gate: a wrong gate order, a missing bias or a frame shifted by padding is >= 1e-2.
ATOL = 1e-4


def fsdd_features(am, n: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """n FSDD test utterances -> (B, T, F) float32 features (zero-padded) and (B,) int64 lengths."""
    fe = FrontEnd(am.config.features, am.stats)
    rows = [json.loads(line) for line in (FSDD / "test.jsonl").read_text().splitlines()][::stride][:n]
    feats = [fe.features(fe.load(FSDD / r["audio"]))[0] for r in rows]
    x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    return x.numpy(), np.array([f.shape[0] for f in feats], dtype=np.int64)


def session(path: Path):  # type: ignore[no-untyped-def]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", ["streaming-en", "digits-en"])  # unidirectional + lookahead; bidirectional
def test_onnx_matches_pytorch(name: str, tmp_path: Path) -> None:
    am = load_model_dir(REPO / "models" / name)
    path = export_onnx(am.model, tmp_path / ONNX_FILE)
    sess = session(path)
    for n, stride in ((7, 53), (1, 11)):  # batch sizes and lengths other than the traced example's (2 x 120)
        x, lengths = fsdd_features(am, n, stride)
        got, got_len = sess.run(None, {"features": x, "lengths": lengths})
        with torch.no_grad():
            ref, ref_len = am.model(torch.from_numpy(x), torch.from_numpy(lengths))
        ref = ref.log_softmax(-1).numpy()
        np.testing.assert_array_equal(got_len, ref_len.numpy())
        assert got.shape == ref.shape
        valid = np.arange(ref.shape[1])[None, :] < ref_len.numpy()[:, None]
        assert np.abs(got - ref)[valid].max() <= ATOL


def test_portable_copy_uses_plain_gru() -> None:
    """The exported network runs torch.gru (ONNX's GRU op), not the native custom op, on the same weights."""
    am = load_model_dir(REPO / "models" / "streaming-en")
    plain = portable_copy(am.model)
    assert all(type(layer.rnn) is torch.nn.GRU for layer in plain.rnns)
    assert torch.equal(plain.rnns[2].rnn.weight_hh_l0, am.model.rnns[2].rnn.weight_hh_l0)
    with pytest.raises(ValueError, match="float model"):
        portable_copy(quantize(am.model, QuantConfig("int8")))


def test_export_cli_writes_onnx(tmp_path: Path) -> None:
    """``deepspeech export --onnx`` writes model.onnx beside model.safetensors; it loads in onnxruntime."""
    out = tmp_path / "model"
    r = run_cli("export", "--model", str(REPO / "models" / "streaming-en"), "--to", str(out), "--command-line",
                "test", "--onnx", "--no-progress", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "model.safetensors").is_file()
    names = [i.name for i in session(out / ONNX_FILE).get_inputs()]
    assert names == ["features", "lengths"]
