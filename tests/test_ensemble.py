"""Model ensembles (deepspeech/ensemble.py, deepspeech/training/ensemble.py): hypothesis-level combination of CTC
members, ensemble model directories, and ensemble training end to end on real audio."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepspeech.beam import best_hypothesis
from deepspeech.checkpoint import CheckpointError, assemble_ensemble, load_model_dir
from deepspeech.ensemble import IMPOSSIBLE, combine, ctc_log_likelihoods, member_log_probs
from deepspeech.streaming import StreamingError, check_streamable
from deepspeech.text import english_tokenizer
from tests.conftest import FSDD, run_cli
from tests.test_training import train_args

TOK = english_tokenizer()


def _spiky(text: str, frames: int, at: int, p: float = 0.9) -> np.ndarray:
    """(T, V) log-probabilities that spell ``text`` one symbol per frame from frame ``at`` (probability ``p``),
    blank elsewhere: a confident CTC output with its own timing."""
    v = len(TOK)
    x = np.full((frames, v), (1 - p) / (v - 1))
    x[:, 0] = p
    for i, s in enumerate(TOK.encode(text)):
        x[at + i] = (1 - p) / (v - 1)
        x[at + i, s] = p
    return np.log(x / x.sum(1, keepdims=True)).astype(np.float32)


def test_ctc_log_likelihoods_equal_ctc_loss_and_all_blanks() -> None:
    rng = np.random.default_rng(0)
    logp = np.log(rng.dirichlet(np.ones(len(TOK)), size=(20, 3))).astype(np.float32)  # (T, M, V)
    cands = [TOK.encode("one"), TOK.encode("two two"), [], TOK.encode("x" * 21)]
    ll = ctc_log_likelihoods(logp, cands)
    assert ll.shape == (3, 4)
    for m in range(3):
        for c in (0, 1):
            ref = -F.ctc_loss(torch.from_numpy(logp[:, m : m + 1]), torch.tensor([cands[c]]), torch.tensor([20]),
                              torch.tensor([len(cands[c])]), reduction="sum")
            assert ll[m, c] == pytest.approx(float(ref), rel=1e-5)
        assert ll[m, 2] == pytest.approx(float(logp[:, m, 0].sum()), rel=1e-5)  # empty: blank on every frame
        assert ll[m, 3] == IMPOSSIBLE  # 21 symbols cannot fit 20 frames


def test_members_with_different_timing_agree_where_a_frame_average_fails() -> None:
    a, b = _spiky("zero", 20, at=1), _spiky("zero", 20, at=12)
    logp = np.stack([a, b], axis=1)  # (T, 2, V)
    frame_avg = np.log(np.exp(logp).mean(1))
    assert best_hypothesis(frame_avg, TOK, None).text != "zero"  # the spikes cancel against the other's blanks
    h = best_hypothesis(logp, TOK, None)
    assert h.text == "zero" and h.extra["member"] == 0
    assert [(w.text, w.start) for w in h.words] == [("zero", 1)]  # the proposing member's frames
    assert member_log_probs(logp, h) is not None and member_log_probs(logp, h).shape == (20, len(TOK))


def test_the_proposal_the_members_find_more_likely_wins() -> None:
    # member 0 hesitantly reads "one" (p=0.4), member 1 confidently "nine"; member 0 also finds "nine" plausible
    hesitant = _spiky("one", 20, at=2, p=0.4)
    nine = TOK.encode("nine")
    for i, s in enumerate(nine):
        hesitant[2 + i, s] = math.log(0.35)
    sure = _spiky("nine", 20, at=8, p=0.95)
    logp = np.stack([hesitant, sure], axis=1)
    ll = ctc_log_likelihoods(logp, [TOK.encode("one"), nine]).mean(0)
    assert ll[1] > ll[0]
    h = combine(logp, TOK, None)
    assert h.text == "nine" and h.extra["member"] == 1 and h.am_score == pytest.approx(float(ll[1]))
    one_member = combine(logp[:, :1], TOK, None)  # a single member: its own greedy hypothesis
    assert one_member.text == best_hypothesis(hesitant, TOK, None).text == "one"


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ensemble of 2 small members trained side by side (child processes) on 48 real FSDD utterances."""
    tmp = tmp_path_factory.mktemp("ens")
    rows = [json.loads(x) for x in (FSDD / "train.jsonl").read_text().splitlines()][::31][:48]
    dev_rows = [json.loads(x) for x in (FSDD / "dev.jsonl").read_text().splitlines()][::31][:16]
    for name, rs in (("train", rows), ("dev", dev_rows)):
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps({**r, "audio": str((FSDD / r["audio"]).resolve())})
                                                   + "\n" for r in rs))
    out = tmp / "run"
    r = run_cli("train", *train_args(tmp / "train.jsonl", tmp / "dev.jsonl", out, "members=2", "epochs=2",
                                     "select=last", "features.warp_search=[0.95,1.05]"))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_ensemble_training_assembles_a_model_directory(ensemble_run: Path) -> None:
    members = [load_model_dir(ensemble_run / "members" / str(k) / "best") for k in range(2)]
    assert [m.config.seed for m in members] == [0, 1] and all(m.config.members == 1 for m in members)
    am = load_model_dir(ensemble_run / "best")
    assert am.n_members == 2 and am.config.members == 2 and am.config.seed == 0
    w0, w1 = members[0].model.state_dict(), members[1].model.state_dict()
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # different seeds: different members
    for k, v in am.members[0][0].state_dict().items():
        assert torch.equal(v, w1[k])
    assert (ensemble_run / "last" / "members" / "1" / "model.safetensors").is_file()
    assert json.loads((ensemble_run / "members" / "1" / "best" / "metrics.json").read_text())["epoch"] == 2


@torch.no_grad()
def test_ensemble_forward_stacks_each_members_own_output(ensemble_run: Path) -> None:
    am = load_model_dir(ensemble_run / "best")
    single = [load_model_dir(ensemble_run / "members" / str(k) / "best") for k in range(2)]
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(2, 60, 161, generator=g) * 2 - 6  # log power
    lengths = torch.tensor([60, 41])
    valid = (torch.arange(60)[None, :] < lengths[:, None]).unsqueeze(-1)
    logits, out_len = am.forward(torch.where(valid, am.stats.normalize(raw), 0.0), lengths)
    assert logits.shape[:3] == (2, int(out_len.max()), 2) and logits.shape[3] == len(am.tokenizer)
    for k, m in enumerate(single):  # member k reads the features under its own statistics
        own, own_len = m.forward(torch.where(valid, m.stats.normalize(raw), 0.0), lengths)
        assert torch.equal(own_len, out_len)
        torch.testing.assert_close(logits[:, :, k], own, atol=1e-4, rtol=1e-4)  # renormalisation: fp32 rounding


def test_eval_and_transcribe_an_ensemble(ensemble_run: Path) -> None:
    files = [str(FSDD / "audio" / f) for f in ("0_theo_0.flac", "5_yweweler_2.flac")]
    r = run_cli("transcribe", *files, "--model", str(ensemble_run / "best"), "--format", "jsonl", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == 2 and all(row.get("error") is None for row in rows)
    manifest = ensemble_run.parent / "dev.jsonl"
    r = run_cli("eval", "--model", str(ensemble_run / "best"), "--manifest", str(manifest), "--format", "json",
                "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert summary["n"] == 16 and 0.0 <= summary["wer"] <= 1.5


def test_ensembles_refuse_to_stream_and_mismatched_members_refuse_to_assemble(ensemble_run: Path,
                                                                              tmp_path: Path) -> None:
    am = load_model_dir(ensemble_run / "best")
    uni = dataclasses.replace(am.config, model=dataclasses.replace(am.config.model, bidirectional=False),
                              features=dataclasses.replace(am.config.features, utterance_norm="none", trim_db=0.0,
                                                           warp_search=()))
    am.config = uni
    with pytest.raises(StreamingError, match="ensemble"):
        check_streamable(am)
    other = tmp_path / "other"
    r = run_cli("train", *train_args(ensemble_run.parent / "train.jsonl", ensemble_run.parent / "dev.jsonl", other,
                                     "epochs=1", "max_steps=1", "model.rnn_hidden=16"))
    assert r.returncode == 0, r.stderr[-2000:]
    with pytest.raises(CheckpointError, match="differs"):
        assemble_ensemble([ensemble_run / "members" / "0" / "best", other / "last"], tmp_path / "bad")
    broken = tmp_path / "broken"
    assemble_ensemble([ensemble_run / "members" / "0" / "best", ensemble_run / "members" / "1" / "best"], broken)
    (broken / "members" / "1" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="ensemble members"):
        load_model_dir(broken)


def test_long_recordings_are_segmented_and_decoded_by_the_ensemble(ensemble_run: Path, tmp_path: Path) -> None:
    import soundfile as sf

    from deepspeech.audio import load_audio
    from deepspeech.longform import ChunkConfig
    from deepspeech.transcribe import transcribe_files

    words = [load_audio(FSDD / "audio" / f"{d}_theo_0.flac") for d in range(6)]
    gap = np.zeros(8000, dtype=np.float32)
    long = tmp_path / "long.wav"
    sf.write(long, np.concatenate([x for w in words for x in (w, gap)]), 16000)  # ~5 s: six words and pauses
    am = load_model_dir(ensemble_run / "best")
    chunk = ChunkConfig(min_segment_s=1.0, max_segment_s=2.0, pause_s=0.2, block_s=1.0)  # the long-form path
    calls = []
    forward = am.forward
    am.forward = lambda x, n: calls.append(x.shape) or forward(x, n)  # type: ignore[method-assign]
    (t,) = transcribe_files(am, [long], chunk=chunk, progress=False)
    assert t.error is None and t.text is not None and len(calls) >= 2  # segmented
    assert all(0 <= w.start <= w.end <= t.duration_s + 0.05 for w in t.words)  # on the file's time line


def test_rerunning_a_finished_ensemble_changes_nothing(ensemble_run: Path) -> None:
    """A re-run resumes each member from its own checkpoint; finished members are not trained again."""
    before = [load_model_dir(ensemble_run / "members" / str(k) / "last").model.state_dict() for k in range(2)]
    r = run_cli("train", *train_args(ensemble_run.parent / "train.jsonl", ensemble_run.parent / "dev.jsonl",
                                     ensemble_run, "members=2", "epochs=2", "select=last",
                                     "features.warp_search=[0.95,1.05]"))
    assert r.returncode == 0, r.stderr[-2000:]
    for k in range(2):
        after = load_model_dir(ensemble_run / "members" / str(k) / "last").model.state_dict()
        assert all(torch.equal(before[k][n], after[n]) for n in after)
    assert load_model_dir(ensemble_run / "best").n_members == 2


def test_export_carries_every_member_and_says_so(ensemble_run: Path, tmp_path: Path) -> None:
    dev = ensemble_run.parent / "dev.jsonl"
    r = run_cli("export", "--model", str(ensemble_run / "best"), "--to", str(tmp_path / "x"), "--command-line",
                "test", "--eval", f"dev={dev}", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    am = load_model_dir(tmp_path / "x")
    assert am.n_members == 2
    direct = run_cli("eval", "--model", str(ensemble_run / "best"), "--manifest", str(dev), "--format", "json",
                     "--no-progress")
    assert json.loads(r.stdout)["dev"]["wer"] == json.loads(direct.stdout)["wer"]  # the card measures the ensemble
    assert "ensemble of 2" in (tmp_path / "x" / "README.md").read_text()
