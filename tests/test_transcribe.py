"""Offline transcription: long recordings segmented in bounded memory, output formats, word times, resuming."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from deepspeech.checkpoint import load_model_dir
from deepspeech.decoding.greedy import greedy_decode_logp
from deepspeech.frontend.audio import load_audio
from deepspeech.frontend.features import log_spectrogram, prepare_utterance
from deepspeech.frontend.silence import speech_present
from deepspeech.inference.longform import ChunkConfig, quietest_cut, segment_features, transcribe_long
from deepspeech.inference.transcribe import TimedWord, cues, frame_seconds, render, transcribe_files
from deepspeech.inference.warp_search import acoustic_forward
from tests.conftest import FSDD, REPO, run_cli

MODEL = REPO / "models" / "digits-en"
DIGITS = ["3_theo_0", "7_yweweler_1", "1_theo_2", "9_yweweler_3", "0_theo_4", "5_yweweler_5", "2_theo_6",
          "8_yweweler_7", "4_theo_8", "6_yweweler_9"]


@pytest.fixture(scope="module")
def am():  # type: ignore[no-untyped-def]
    return load_model_dir(MODEL)


def concat_digits(path: Path, names: list[str], gap_s: float = 0.6, sr: int = 16_000) -> list[tuple[float, float]]:
    """Digits separated by silence, written at ``sr``; returns each digit's (start, end) time (s)."""
    parts, spans, t = [], [], 0.0
    for name in names:
        wav = load_audio(FSDD / "audio" / f"{name}.flac")
        spans.append((t, t + wav.size / 16_000))
        gap = np.zeros(int(gap_s * 16_000), np.float32)
        parts += [wav, gap]
        t += (wav.size + gap.size) / 16_000
    audio = np.concatenate(parts)
    if sr != 16_000:
        import soxr

        audio = soxr.resample(audio, 16_000, sr)
    sf.write(path, audio, sr)
    return spans


def test_streamed_segmentation_equals_in_memory_reference(am, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The bounded-memory path (blocks of audio, streaming features, segments cut on the fly) gives exactly the
    segments and text of doing the same with the whole file in memory."""
    wav_path = tmp_path / "long.wav"
    concat_digits(wav_path, DIGITS * 2)  # about 25 s
    cc = ChunkConfig(min_segment_s=2.0, max_segment_s=4.0, block_s=1.3)
    feats = log_spectrogram(load_audio(wav_path), am.config.features)
    ref_segments, rest = [], feats
    lo, hi, width, stride = 200, 400, 20, am.config.model.time_stride
    while rest.shape[0] >= hi:
        cut = quietest_cut(rest, lo, hi, width, stride)
        ref_segments.append(rest[:cut])
        rest = rest[cut:]
    got = list(segment_features(wav_path, am, cc))
    assert [s.shape[0] for s in got[: len(ref_segments)]] == [s.shape[0] for s in ref_segments]
    assert sum(s.shape[0] for s in got) == feats.shape[0]
    torch.testing.assert_close(torch.cat(got), feats, rtol=0, atol=0)
    # Whole-file-in-memory decoding of the same segments (each endpointed and normalised on its own, as the model
    # was trained; a segment whose samples hold no speech-level energy reads as nothing) gives the same text as the
    # streamed run.
    wav, hop, start = load_audio(wav_path), am.config.features.hop_length, 0
    texts = []
    for k, seg in enumerate(got):
        samples = wav[start * hop:(start + seg.shape[0]) * hop if k < len(got) - 1 else None]
        start += seg.shape[0]
        if not speech_present(samples):
            texts.append("")
            continue
        with torch.no_grad():
            x = am.stats.normalize(prepare_utterance(seg, am.config.features)[0])
            logits, lengths = acoustic_forward(am)(x[None], torch.tensor([x.shape[0]]))  # with its warp search
        texts.append(greedy_decode_logp(torch.log_softmax(logits[0], -1).numpy(), am.tokenizer).text)
    long = transcribe_long(wav_path, am, cc)
    assert long.text == " ".join(t for t in texts if t)
    assert len(got) >= 5  # about 25 s in segments of at most 4 s


def test_short_file_is_one_segment_same_as_batched(am, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    wav_path = tmp_path / "short.wav"
    concat_digits(wav_path, DIGITS[:3], sr=8000)
    batched = transcribe_files(am, [wav_path], progress=False)[0]
    long = transcribe_long(wav_path, am, ChunkConfig(min_segment_s=30, max_segment_s=60))
    assert batched.text == long.text and batched.text


def test_jsonl_words_times_and_confidence(tmp_path: Path) -> None:
    wav_path = tmp_path / "rec.flac"
    spans = concat_digits(wav_path, DIGITS, gap_s=0.8, sr=8000)  # about 14 s: segmented
    single = FSDD / "audio" / "4_theo_0.flac"
    out = tmp_path / "out.jsonl"
    res = run_cli("transcribe", str(wav_path), str(single), "--model", str(MODEL), "--format", "jsonl",
                  "--output", str(out), "--segment-min-s", "2", "--segment-max-s", "4", "--no-progress")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["rec.flac", "4_theo_0.flac"]
    long = rows[0]
    assert long["error"] is None and abs(long["duration_s"] - (spans[-1][1] + 0.8)) < 0.01
    words = long["words"]
    assert len(words) >= 4 and " ".join(w["word"] for w in words) == long["text"]
    times = [(w["start"], w["end"]) for w in words]
    assert all(0 <= a < b <= long["duration_s"] + 0.05 for a, b in times)
    assert all(times[k][1] <= times[k + 1][0] + 1e-6 for k in range(len(times) - 1))
    assert all(0 < w["confidence"] <= 1 for w in words) and 0 < long["confidence"] <= 1
    # The CTC alignment puts words on speech: each word overlaps a digit's span (0.1 s slack), none sits in the
    # 0.8 s silences. (The digits model, trained on isolated digits, spells run-on digits poorly; times are
    # what is checked here.)
    for a, b in times:
        assert any(a < e + 0.1 and b > s - 0.1 for s, e in spans), (a, b, spans)
    assert rows[1]["text"] == "four" and rows[1]["words"][0]["word"] == "four"

    # A rerun skips what is done and appends nothing.
    res = run_cli("transcribe", str(wav_path), str(single), "--model", str(MODEL), "--format", "jsonl",
                  "--output", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr
    assert len(out.read_text().splitlines()) == 2 and "2 of 2 files already transcribed" in res.stderr


def test_srt_and_vtt_per_file_outputs_and_resume(tmp_path: Path) -> None:
    wav_path = tmp_path / "in" / "rec.wav"
    wav_path.parent.mkdir()
    concat_digits(wav_path, DIGITS[:4], gap_s=0.8)
    res = run_cli("transcribe", str(wav_path), "--model", str(MODEL), "--no-progress")
    assert res.returncode == 0, res.stderr
    plain = res.stdout.split("\t", 1)[1].strip()
    assert plain
    for fmt in ("srt", "vtt"):
        res = run_cli("transcribe", str(wav_path.parent), "--model", str(MODEL), "--format", fmt,
                      "--output-dir", str(tmp_path / fmt), "--no-progress")
        assert res.returncode == 0, res.stderr
        text = (tmp_path / fmt / f"rec.{fmt}").read_text()
        first = text.splitlines()
        if fmt == "vtt":
            assert first[0] == "WEBVTT" and " --> " in first[2] and "." in first[2]
        else:
            assert first[0] == "1" and " --> " in first[1] and "," in first[1]
        cue_text = [ln for ln in first if ln and " --> " not in ln and not ln.isdigit() and ln != "WEBVTT"]
        assert " ".join(cue_text) == plain  # the cues hold the transcript, in order
    res = run_cli("transcribe", str(wav_path.parent), "--model", str(MODEL), "--format", "srt",
                  "--output-dir", str(tmp_path / "srt"), "--no-progress")
    assert res.returncode == 0 and "1 of 1 files already transcribed" in res.stderr


def test_cues_and_render() -> None:
    words = [TimedWord("one", 0.0, 0.4, 0.9), TimedWord("two", 0.5, 0.9, 0.8), TimedWord("three", 3.0, 3.5, 0.7)]
    assert cues(words, "en") == [(0.0, 0.9, "one two"), (3.0, 3.5, "three")]  # the pause splits the cue
    from deepspeech.inference.transcribe import Transcript

    t = Transcript("a.wav", "one two three", None, 4.0, words, 0.8)
    assert render(t, "srt", "en").startswith("1\n00:00:00,000 --> 00:00:00,900\none two\n\n2\n")
    assert render(t, "vtt", "en").startswith("WEBVTT\n\n00:00:00.000 --> 00:00:00.900\none two\n")
    assert json.loads(render(t, "jsonl", "en"))["words"][2] == {"word": "three", "start": 3.0, "end": 3.5,
                                                               "confidence": 0.7}
    assert render(t, "txt", "en") == "one two three\n"


def test_bad_long_input_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"fLaC" + b"\x00" * 100)
    good = tmp_path / "good.wav"
    concat_digits(good, DIGITS[:2])
    res = run_cli("transcribe", str(bad), str(good), "--model", str(MODEL), "--format", "jsonl", "--no-progress")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(x) for x in res.stdout.splitlines()]
    assert rows[0]["error"] and rows[0]["text"] is None and rows[1]["text"]
    res = run_cli("transcribe", str(good), "--model", str(MODEL), "--format", "srt", "--output", "x.srt")
    assert res.returncode != 0 and "--output FILE takes txt or jsonl" in res.stderr


def test_endpointing_keeps_word_times_on_the_recording_time_line(am, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With ``features.trim_db`` the model reads each utterance (or long-form segment) from its first speech frame,
    but word times still count from the start of the file: a digit after 0.6 s of silence starts after 0.55 s,
    and in a segmented recording every word lies where the model without endpointing puts a word (0.1 s slack;
    the words differ a little, the time line must not)."""
    import dataclasses

    trimmed = dataclasses.replace(am, config=dataclasses.replace(
        am.config, features=dataclasses.replace(am.config.features, trim_db=30.0)))
    four = load_audio(FSDD / "audio" / "4_theo_0.flac")
    late = tmp_path / "late.wav"
    sf.write(late, np.concatenate([np.zeros(9600, np.float32), four, np.zeros(4800, np.float32)]), 16_000)
    (t,) = transcribe_files(trimmed, [late])
    assert t.text == "four" and t.words[0].start >= 0.55 and t.words[-1].end <= 0.6 + four.size / 16_000 + 0.05
    rec = tmp_path / "rec.wav"
    concat_digits(rec, DIGITS, gap_s=0.8)
    cc = ChunkConfig(min_segment_s=2.0, max_segment_s=4.0)
    frame_s = frame_seconds(am)
    times = [[(w.start * frame_s, w.end * frame_s) for w in transcribe_long(rec, m, cc).words] for m in (trimmed, am)]
    assert len(times[0]) >= 4
    for a, b in times[0]:
        assert any(a < e + 0.1 and b > s - 0.1 for s, e in times[1]), (a, b, times[1])


def test_eval_reads_a_long_utterance_as_transcribe_does(am, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """eval used to put a long utterance through the network whole (a 2-hour file: 8.4 GB, then a traceback); it
    now takes transcribe's long-recording path past the segmenting threshold: the same text (CLI and library), the
    network never sees more than one segment, and the file is never loaded whole. Here the threshold is 2 s and
    segments at most 4 s, so a 20 s recording padded with 10 s of silence stands for hours."""
    import deepspeech.frontend.front_end as frontend
    from deepspeech.data.manifest import Utterance
    from deepspeech.inference.evaluate import evaluate_manifest

    long = tmp_path / "long.wav"
    concat_digits(long, DIGITS * 2)
    sf.write(long, np.concatenate([sf.read(long, dtype="float32")[0], np.zeros(10 * 16_000, np.float32)]), 16_000)
    short = FSDD / "audio" / "4_theo_0.flac"
    ref = " ".join(n.split("_")[0] for n in DIGITS * 2)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"audio": str(a), "text": t, "duration_s": d}) + "\n" for a, t, d in
                                [(short, "four", 0.5), (long, ref, sf.info(str(long)).duration)]))
    seg = ["--segment-min-s", "2", "--segment-max-s", "4", "--no-progress"]
    res = run_cli("eval", "--model", str(MODEL), "--manifest", str(manifest), "--hypotheses",
                  str(tmp_path / "hyp.jsonl"), "--format", "json", *seg)
    assert res.returncode == 0, res.stderr
    hyps = [json.loads(x)["hyp"] for x in (tmp_path / "hyp.jsonl").read_text().splitlines()]
    res = run_cli("transcribe", str(short), str(long), "--model", str(MODEL), *seg)
    assert res.returncode == 0, res.stderr
    assert hyps == [line.split("\t", 1)[1] for line in res.stdout.splitlines()]
    assert hyps[0] == "four" and len(hyps[1].split()) >= 5  # the digits model reads run-on digits poorly

    frames: list[int] = []
    loaded: list[str] = []
    forward, load = am.forward, frontend.load_audio
    monkeypatch.setattr(am, "forward", lambda x, n: (frames.append(int(x.shape[1])), forward(x, n))[1])
    monkeypatch.setattr(frontend, "load_audio", lambda p: (loaded.append(str(p)), load(p))[1])  # whole files
    cc = ChunkConfig(min_segment_s=2.0, max_segment_s=4.0)
    utts = [Utterance(str(short), "four", 0.5), Utterance(str(long), ref, 30.0)]
    _, records = evaluate_manifest(am, utts, progress=False, chunk=cc)
    assert [r["hyp"] for r in records] == hyps
    assert loaded == [str(short)] and max(frames) <= 400  # 4 s of 10 ms frames
    (t,) = transcribe_files(am, [long], chunk=cc, progress=False)
    assert t.text == hyps[1]
