"""N-best rescoring with a neural LM: a real tiny GPT trained here on digit sentences, exported (also from a TP=2
checkpoint), scoring the beam's N best of the shipped digits-en model; the tuning, eval, transcribe and server routes.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from deepspeech.checkpoint import load_model_dir
from deepspeech.data.manifest import read_manifest
from deepspeech.decoding.hanzi import PinyinToHanzi
from deepspeech.decoding.hypothesis import Hypothesis
from deepspeech.decoding.language_model import LanguageModel
from deepspeech.decoding.rescore import NEURAL_KEY, Q_KEY, RescoreConfig, Rescorer, rerank
from deepspeech.inference.evaluate import collect_log_probs
from deepspeech.inference.recognizer import PostProcessing, Recognizer
from deepspeech.inference.transcribe import transcribe_files
from deepspeech.parallel import ParallelDims, ParallelState, init_parallel
from deepspeech.parallel.workers import GlooWorkers
from lm.export import LMDirError, export_lm
from lm.gpt import GPT, GPTConfig
from lm.scorer import NeuralLM, check_fits, rescoring_decoder, windows
from lm.train import LMTrainConfig, train
from tests.conftest import FSDD, REPO, cut_manifest, run_cli
from tests.serving_util import pcm16_wav, running_server

pytestmark = pytest.mark.usefixtures("one_thread")

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_rng = random.Random(5)
# Digit sentences in which "zero" is most frequent: the LM's favourite single word is then "zero".
TEXT = "\n".join(" ".join(_rng.choice(DIGITS[:1] * 6 + DIGITS) for _ in range(_rng.randint(1, 3)))
                 for _ in range(300)) + "\n"
# seq_len 32: sentences longer than that are scored in windows.
TINY = GPTConfig(layers=2, hidden=32, heads=4, seq_len=32, dropout=0.0)
ONE = ParallelState(ParallelDims())
AUDIO = FSDD / "audio"


def _train_and_export(root: Path, steps: int, seed: int = 0) -> tuple[GPT, Path]:
    model, tok, _ = train(LMTrainConfig(model=TINY, steps=steps, batch_size=8, seed=seed, save_dir=str(root / "ckpt")),
                          ONE, TEXT)
    tok.save(root / "ckpt" / "tokenizer.json")
    return model, export_lm(root / "ckpt", root / "lm")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train_and_export(tmp_path_factory.mktemp("nlm"), steps=40)[1]


@pytest.fixture(scope="module")
def neural(lm_dir: Path) -> NeuralLM:
    return NeuralLM.load(lm_dir)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("m") / "digits-en"
    return Path(shutil.copytree(REPO / "models" / "digits-en", dst))


def test_batched_scores_equal_one_by_one_and_long_texts_are_windowed(neural: NeuralLM) -> None:
    """One right-padded batch gives each sentence's one-by-one score. Tolerance 1e-4 absolute on sums of < 120
    float32 log-probabilities: padding changes only the matmul shapes (summation blocking), never what a causal
    position sees. A sentence of 3 * seq_len characters is scored in windows, finitely; the window plan scores every
    position once."""
    texts = ["zero", "one two", "", "seven eight nine", "zero " * 20 + "one", "x\u00e9q"]
    batched = neural.log_probs(texts)
    for t, b in zip(texts, batched, strict=True):
        assert b == pytest.approx(neural.log_prob(t), abs=1e-4)
        assert b < 0 and math.isfinite(b)
    assert neural.log_prob("zero") > neural.log_prob("zreo")  # it learned something
    assert neural.log_prob("x\u00e9q") == pytest.approx(neural.log_prob("x\u00e8q"), abs=1e-5)  # both unknown ids
    assert neural.unit == "char" and isinstance(neural, LanguageModel)
    for n, s in [(2, 32), (32, 32), (33, 32), (100, 32), (97, 8)]:
        scored = [i for _, e, first in windows(n, s) for i in range(first, e)]
        assert scored == list(range(1, n)) and all(e - st <= s for st, e, _ in windows(n, s))


def _job_tp2(root: str) -> None:
    state = init_parallel(ParallelDims(tp=2))
    train(LMTrainConfig(model=replace(TINY, sequence_parallel=True), steps=3, batch_size=4, save_dir=root), state,
          TEXT)


def test_a_tp2_checkpoint_exports_to_the_one_rank_models_scores(tmp_path: Path) -> None:
    """A checkpoint written at TP=2 with sequence parallelism (2 gloo processes) exports to one rank and scores as
    the one-rank run of the same steps does (tolerance 1e-3 on sentence sums: TP=2 training reaches the one-rank
    weights to ~1e-6, see tests/test_parallel_tp.py); the TP=1 export scores exactly as the model in memory."""
    with GlooWorkers(2) as pool:
        pool.run(_job_tp2, str(tmp_path / "tp2"))
    ref, tok, _ = train(LMTrainConfig(model=TINY, steps=3, batch_size=4, save_dir=str(tmp_path / "tp1")), ONE, TEXT)
    tok.save(tmp_path / "tok.json")
    assert isinstance(ref, GPT)
    in_memory = NeuralLM(ref, tok)
    texts = ["zero one", "nine", "three three three"]
    want = in_memory.log_probs(texts)
    one = NeuralLM.load(export_lm(tmp_path / "tp1", tmp_path / "lm1", tmp_path / "tok.json"))
    assert one.log_probs(texts) == want
    two = NeuralLM.load(export_lm(tmp_path / "tp2", tmp_path / "lm2", tmp_path / "tok.json"))
    assert two.log_probs(texts) == pytest.approx(want, abs=1e-3)
    assert json.loads((tmp_path / "lm2" / "lm.json").read_text())["config"]["seq_len"] == TINY.seq_len


def _hyp(text: str, am: float, lm: float) -> Hypothesis:
    return Hypothesis(text, am_score=am, lm_score=lm)


def test_reranking_math_on_a_hand_made_nbest_list(neural: NeuralLM) -> None:
    """Q = am + alpha * lm + beta * |words| + gamma * neural. With gamma = 0 and the beam's alpha and beta the beam
    order stands; a large gamma picks the neural LM's favourite; Mandarin counts characters."""
    cfg = RescoreConfig(alpha=0.5, beta=1.0, gamma=0.0, nbest=3)
    hyps = [_hyp("one two", -1.0, -4.0), _hyp("one", -1.5, -3.0), _hyp("zero", -2.0, -3.5)]  # Q -1, -2, -2.75
    out = rerank(hyps, [-9.0, -5.0, -1.0], cfg, "en")
    assert [h.text for h in out] == ["one two", "one", "zero"]
    assert [h.extra[Q_KEY] for h in out] == pytest.approx([-1.0, -2.0, -2.75])
    assert [h.extra[NEURAL_KEY] for h in out] == [-9.0, -5.0, -1.0]
    big = rerank(hyps, [-9.0, -5.0, -1.0], replace(cfg, gamma=10.0), "en")
    assert big[0].text == "zero" and big[0].extra[Q_KEY] == pytest.approx(-2.0 + 0.5 * -3.5 + 1.0 - 10.0)
    tie = rerank([_hyp("a", 0, 0), _hyp("b", 0, 0)], [0.0, 0.0], cfg, "en")
    assert [h.text for h in tie] == ["a", "b"]  # stable
    zh = rerank([_hyp("我们", 0, 0), _hyp("我们今天", 0, 0)], [0.0, 0.0], cfg, "zh")
    assert [h.text for h in zh] == ["我们今天", "我们"] and [h.extra[Q_KEY] for h in zh] == [4.0, 2.0]
    # The real LM: with a large gamma the winner is the text it scores highest.
    texts = ["seven", "zero", "six", "one two"]
    real = Rescorer(neural, RescoreConfig(alpha=0.0, beta=0.0, gamma=1000.0), "en")([_hyp(t, -1.0, 0.0) for t in texts])
    scores = neural.log_probs(texts)
    assert real[0].text == texts[max(range(len(texts)), key=scores.__getitem__)]
    assert real[0].extra[NEURAL_KEY] == pytest.approx(max(scores), abs=1e-4)


def test_tune_writes_rescore_json_that_eval_reads_and_another_lm_gets_the_defaults(
        model: Path, lm_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dev = cut_manifest(FSDD / "dev.jsonl", tmp_path / "dev.jsonl", 500)
    dev.write_text("\n".join(dev.read_text().splitlines()[::50]) + "\n")  # 10 utterances
    r = run_cli("lm", "tune", "--model", str(model), "--manifest", str(dev), "--rescore", str(lm_dir), "--nbest",
                "4", "--alphas", "0", "--betas", "0", "--gammas", "0,1", "--dry-run", "--no-progress")
    assert r.returncode == 0 and not json.loads(r.stdout)["written"], r.stderr
    assert not (model / "rescore.json").exists()
    r = run_cli("lm", "tune", "--model", str(model), "--manifest", str(dev), "--rescore", str(lm_dir), "--nbest",
                "8", "--alphas", "0.25", "--betas", "0.5", "--gammas", "0.75", "--no-progress")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    saved = json.loads((model / "rescore.json").read_text())
    assert saved["config"] == {"alpha": 0.25, "beta": 0.5, "gamma": 0.75, "nbest": 8} and out["written"]
    assert saved["lm"]["sha256"] == NeuralLM.load(lm_dir).sha256 and saved["metric"] == "wer"
    assert out["before"]["n"] == out["after"]["n"] == 10
    r = run_cli("eval", "--model", str(model), "--manifest", str(dev), "--rescore", str(lm_dir), "--format",
                "json", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "rescoring the 8 best" in r.stderr and "alpha 0.25 beta 0.50 gamma 0.75" in r.stderr
    assert json.loads(r.stdout)["wer"] == pytest.approx(out["after"]["wer"])  # the tuned route is eval's route
    # Weights tuned for one LM are not used with another: one warning line and the documented defaults (the beam's
    # alpha and beta from decoder.json, RescoreConfig's gamma and nbest).
    other = _train_and_export(tmp_path / "other", steps=5, seed=1)[1]
    am = load_model_dir(model)
    with caplog.at_level(logging.INFO):
        dec = rescoring_decoder(model, am, other)
    warnings = [rec for rec in caplog.records if "tuned for another LM" in rec.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    beam = json.loads((model / "decoder.json").read_text())["config"]
    assert dec.rescorer.cfg == RescoreConfig(alpha=beam["alpha"], beta=beam["beta"])
    assert dec.decoder.cfg.nbest == RescoreConfig().nbest  # type: ignore[attr-defined]
    assert rescoring_decoder(model, am, lm_dir).rescorer.cfg == RescoreConfig(0.25, 0.5, 0.75, 8)


def test_transcribe_with_rescore_and_the_recognizer_reranks(model: Path, lm_dir: Path, tmp_path: Path) -> None:
    """`transcribe --rescore` end to end; the recognizer's post-processing re-ranks the beam's N best by Q (its
    best is the offline transcription's text), while the decoder alone keeps the beam's order."""
    wav = AUDIO / "3_theo_1.flac"
    r = run_cli("transcribe", str(wav), "--model", str(model), "--rescore", str(lm_dir), "--nbest", "4",
                "--format", "jsonl", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["text"] in DIGITS
    am = load_model_dir(model)
    dec = rescoring_decoder(model, am, lm_dir, nbest=6)
    assert dec.decoder.cfg.nbest == 6  # type: ignore[attr-defined]
    dev = cut_manifest(FSDD / "dev.jsonl", tmp_path / "one.jsonl", 1)
    [(logp, _)] = collect_log_probs(am, read_manifest(dev), progress=False)
    beam = dec.decode(logp)
    hyps = Recognizer(am, dec).decode(logp)
    assert len(hyps) == len(beam) > 1 and all(NEURAL_KEY not in h.extra for h in beam)
    q = [h.extra[Q_KEY] for h in hyps]
    assert q == sorted(q, reverse=True) and sorted(h.text for h in hyps) == sorted(h.text for h in beam)
    assert Recognizer(am, dec.decoder).decode(logp)[0].text == beam[0].text  # no rescorer: the beam's order
    [t] = transcribe_files(am, [Path(read_manifest(dev)[0].audio)], progress=False, decoder=dec)
    assert t.text == hyps[0].text


@pytest.mark.parametrize("damage", ["no-dir", "no-weights", "bad-json", "kenlm-dir", "mismatch", "script"])
def test_a_bad_lm_dir_is_one_clear_line(lm_dir: Path, model: Path, tmp_path: Path, damage: str) -> None:
    bad = Path(shutil.copytree(lm_dir, tmp_path / "bad"))
    meta = json.loads((bad / "lm.json").read_text())
    want = {"no-dir": "no such LM directory", "no-weights": "no model.safetensors", "bad-json": "lm.json: malformed",
            "kenlm-dir": "not a neural LM directory", "mismatch": "the weights do not match lm.json",
            "script": "han-script character LM does not fit"}[damage]
    if damage == "no-dir":
        bad = tmp_path / "missing"
    elif damage == "no-weights":
        (bad / "model.safetensors").unlink()
    elif damage == "bad-json":
        (bad / "lm.json").write_text("{not json")
    elif damage == "kenlm-dir":
        bad = REPO / "models" / "digits-en" / "lm"
    elif damage == "mismatch":
        meta["config"]["hidden"] = 48
        (bad / "lm.json").write_text(json.dumps(meta))
    else:  # Mandarin characters in place of the letters: loads, but does not fit an English model
        meta["chars"] = [meta["chars"][0]] + [c if not c.isalpha() else chr(0x4E00 + i)
                                              for i, c in enumerate(meta["chars"][1:])]
        (bad / "lm.json").write_text(json.dumps(meta, ensure_ascii=False))
    with pytest.raises(LMDirError, match=want) as e:
        rescoring_decoder(model, load_model_dir(model), bad)
    assert "\n" not in str(e.value)
    if damage == "mismatch":  # the CLI prints that one line and exits 2
        r = run_cli("transcribe", str(AUDIO / "0_theo_0.flac"), "--model", str(model), "--rescore", str(bad),
                    "--no-progress")
        assert r.returncode == 2 and "Traceback" not in r.stderr and want in r.stderr, r.stderr
        assert len([ln for ln in r.stderr.splitlines() if "ERROR" in ln]) == 1


def test_server_final_result_with_rescore(lm_dir: Path, tmp_path: Path) -> None:
    """The server's final result with --rescore is offline transcription with the same rescoring decoder."""
    streaming = REPO / "models" / "streaming-en"
    wav = pcm16_wav(AUDIO / "5_yweweler_2.flac", tmp_path / "a.wav", pad_s=0.3)
    am = load_model_dir(streaming)
    [want] = transcribe_files(am, [wav], progress=False, decoder=rescoring_decoder(streaming, am, lm_dir))
    with running_server(streaming, "--rescore", str(lm_dir), log_path=tmp_path / "log") as (proc, host):
        r = httpx.post(f"http://{host}/v1/transcribe", content=wav.read_bytes(), timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["text"] == want.text
    assert "rescoring the 16 best" in (tmp_path / "log").read_text()


def test_a_pinyin_models_characters_are_rescored_by_a_character_lm(neural: NeuralLM) -> None:
    """Rescoring follows the pinyin-to-character step of the post-processing: the character LM scores the
    characters (the pinyin stays in extra), and an English LM does not fit a model whose text is characters."""
    text = "\n".join(["我们今天去学校", "今天天气很好", "我们去公园", "学校很大", "天气很好我们去"] * 20) + "\n"
    model, tok, _ = train(LMTrainConfig(model=TINY, steps=20, batch_size=8), ONE, text)
    assert isinstance(model, GPT)
    zh = NeuralLM(model, tok)
    check_fits(zh, "zh", "a Mandarin model")
    with pytest.raises(LMDirError, match="latin-script character LM does not fit a Mandarin model"):
        check_fits(neural, "zh", "a Mandarin model")
    hanzi = PinyinToHanzi({"wo3": [("我", 5)], "men5": [("们", 5)], "jin1": [("今", 3)], "tian1": [("天", 3)],
                           "qi4": [("气", 2)]}, None)
    post = PostProcessing(hanzi, Rescorer(zh, RescoreConfig(alpha=0.0, beta=0.0, gamma=100.0), "zh"))
    out = post([_hyp("tian1 qi4 wo3", -1.0, 0.0), _hyp("wo3 men5", -2.0, 0.0), _hyp("jin1 tian1", -3.0, 0.0)])
    chars = ["天气我", "我们", "今天"]
    want = dict(zip(chars, zh.log_probs(chars), strict=True))
    assert {h.text for h in out} == set(chars) and {h.extra["pinyin"] for h in out} >= {"wo3 men5"}
    for h in out:
        assert h.extra[NEURAL_KEY] == pytest.approx(want[h.text], abs=1e-4)
    assert out[0].text == max(want, key=want.__getitem__)
