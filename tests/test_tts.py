"""The speech corpus generator: espeak-ng, flite, Festival and SVOX Pico voices (each test skips where its
synthesiser is not installed; CI installs them all)."""

from __future__ import annotations

import importlib.util
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import data_synthesis.tts as tts
from data_synthesis.tts import (
    CMU_VOICES,
    DIGIT_SPELLINGS,
    DIGITS,
    FESTIVAL_VOICES,
    PICO_VOICES,
    SynthesisError,
    TTSConfig,
    installed_festival_voices,
    pico_speak,
    respell,
    synthesize_corpus,
    trim,
    voice_command,
)
from deepspeech.data.manifest import read_manifest
from deepspeech.frontend.audio import load_audio

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
needs_cmu = pytest.mark.skipif(shutil.which("flite") is None or shutil.which("text2wave") is None,
                               reason="flite or festival is not installed")


@needs_espeak
def test_corpus_is_deterministic_and_readable(tmp_path: Path) -> None:
    texts = ["one", "two", "three"]
    a = synthesize_corpus(texts, tmp_path / "a", TTSConfig(sample_rate=8000), seed=3, progress=False)
    b = synthesize_corpus(texts, tmp_path / "b", TTSConfig(sample_rate=8000), seed=3, progress=False)
    assert [u.text for u in a] == texts and [u.speaker for u in a] == [u.speaker for u in b]
    back = read_manifest(tmp_path / "a" / "manifest.jsonl")
    assert [u.text for u in back] == texts
    for ua, ub in zip(a, b, strict=True):
        wa, wb = load_audio(ua.audio), load_audio(ub.audio)
        assert np.array_equal(wa, wb)
        assert 0.1 < ua.duration_s < 2.0 and wa.size > 0.1 * 16000


def test_trim_cuts_silence_keeps_the_margin() -> None:
    sr = 16000
    x = np.zeros(sr, dtype=np.float32)
    x[6000:9000] = np.sin(np.arange(3000) * 0.3).astype(np.float32)
    y = trim(x, sr, -30.0, 0.02)
    assert 3000 <= y.size <= 3000 + 2 * 320 + 2 * 160
    assert np.allclose(trim(np.zeros(100, np.float32), sr, -30.0, 0.02), 0.0)


@needs_cmu
def test_cmu_voices_are_deterministic_and_follow_pitch_and_rate(tmp_path: Path) -> None:
    texts = ["seven", "two"] * len(CMU_VOICES)
    cfg = TTSConfig(voices=tuple(CMU_VOICES), sample_rate=8000)
    a = synthesize_corpus(texts, tmp_path / "a", cfg, seed=1, progress=False)
    b = synthesize_corpus(texts, tmp_path / "b", cfg, seed=1, progress=False)
    assert [u.speaker for u in a] == [u.speaker for u in b]
    assert {u.speaker.split("/")[0] for u in a} <= set(CMU_VOICES)  # no espeak variant is appended
    for ua, ub in zip(a, b, strict=True):
        assert np.array_equal(load_audio(ua.audio), load_audio(ub.audio))
        assert 0.2 < ua.duration_s < 2.0
    # Half the rate doubles the duration (within the silence margins); the same holds for Festival's voice.
    for voice in ("flite:rms", "festival:ked"):
        slow = synthesize_corpus(["seven"], tmp_path / "slow", TTSConfig(voices=(voice,), rate=(90, 90)),
                                 progress=False)[0]
        fast = synthesize_corpus(["seven"], tmp_path / "fast", TTSConfig(voices=(voice,), rate=(180, 180)),
                                 progress=False)[0]
        assert 1.6 < slow.duration_s / fast.duration_s < 2.4, voice


def test_voice_command_maps_pitch_and_rate() -> None:
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed")
    cmd = voice_command("four", "flite:slt", pitch=50, rate=165, wav="x.wav")
    assert "duration_stretch=1.000" in cmd and "int_f0_target_mean=170.0" in cmd
    cmd = voice_command("four", "flite:slt", pitch=80, rate=330, wav="x.wav")
    assert "duration_stretch=0.500" in cmd and f"int_f0_target_mean={170 * 2 ** 0.5:.1f}" in cmd
    with pytest.raises(SynthesisError, match="unknown voice"):
        voice_command("four", "flite:nobody", pitch=50, rate=165, wav="x.wav")


def test_respell_gives_each_language_its_spelling_of_the_digits() -> None:
    assert respell("six two", "en") == "six two"  # English voices read the text as it is
    assert respell("Six two", "cs") == "siks tú"
    assert respell("eight", "ru") == "эйт"
    for lang, spellings in DIGIT_SPELLINGS.items():
        assert len(spellings) == len(DIGITS) == len(set(spellings)), lang  # one distinct spelling per digit
    with pytest.raises(SynthesisError, match="only the digit words"):
        respell("hello", "fi")
    with pytest.raises(SynthesisError, match="only the digit words"):
        respell("", "it")


def test_accented_voices_speak_every_digit_deterministically(tmp_path: Path) -> None:
    voices = [v for v in installed_festival_voices() if FESTIVAL_VOICES[v][1] != "en"]
    if not voices:
        pytest.skip("no Festival voice of another language is installed")
    cfg = TTSConfig(voices=tuple(voices), sample_rate=8000, rate=(165, 165))
    texts = list(DIGITS) * 2  # each digit twice, by random voices
    a = synthesize_corpus(texts, tmp_path / "a", cfg, seed=2, progress=False)
    b = synthesize_corpus(texts, tmp_path / "b", cfg, seed=2, progress=False)
    assert [u.text for u in a] == texts  # nothing skipped at the voice's own rate
    assert {u.speaker.split("/")[0] for u in a} <= set(voices)
    for ua, ub in zip(a, b, strict=True):
        wa = load_audio(ua.audio)
        assert np.array_equal(wa, load_audio(ub.audio))
        assert 0.2 < ua.duration_s < 2.0 and np.sqrt(np.mean(wa ** 2)) > 1e-3  # a spoken word, not silence


def test_missing_festival_voice_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if shutil.which("text2wave") is None:
        pytest.skip("festival is not installed")
    monkeypatch.setitem(tts.FESTIVAL_VOICES, "festival:nobody", ("nobody_diphone", "cs", "festvox-nobody"))
    with pytest.raises(SynthesisError, match="not installed.*festvox-nobody"):
        synthesize_corpus(["six"], tmp_path, TTSConfig(voices=("festival:nobody",)), progress=False)
    with pytest.raises(SynthesisError, match="unknown voice"):
        voice_command("four", "festival:somebody", pitch=50, rate=165, wav="x.wav")


needs_pico = pytest.mark.skipif(importlib.util.find_spec("ttspico") is None, reason="ttspico is not installed")


@needs_pico
def test_pico_voices_speak_every_digit_and_follow_pitch_and_rate(tmp_path: Path) -> None:
    cfg = TTSConfig(voices=tuple(PICO_VOICES), sample_rate=8000)
    texts = list(DIGITS) * 2
    a = synthesize_corpus(texts, tmp_path / "a", cfg, seed=4, progress=False)
    b = synthesize_corpus(texts, tmp_path / "b", cfg, seed=4, progress=False)
    assert [u.text for u in a] == texts and {u.speaker.split("/")[0] for u in a} <= set(PICO_VOICES)
    for ua, ub in zip(a, b, strict=True):
        wa = load_audio(ua.audio)
        assert np.array_equal(wa, load_audio(ub.audio))
        # a spoken word, not silence (the French voice says "tou" in 0.1 s at 133% speed)
        assert 0.08 < ua.duration_s < 2.0 and np.sqrt(np.mean(wa ** 2)) > 1e-3
    again, _ = pico_speak("zero", "pico:fr-FR", pitch=77, rate=207)  # a second call speaks exactly as the first
    assert np.array_equal(again, pico_speak("zero", "pico:fr-FR", pitch=77, rate=207)[0])
    slow, _ = pico_speak("seven", "pico:en-US", pitch=50, rate=110)
    fast, _ = pico_speak("seven", "pico:en-US", pitch=50, rate=220)
    assert slow.size > 1.5 * fast.size  # speed 67% against 133% of the voice's own

    def f0(x: np.ndarray, sr: int = 16_000) -> float:  # autocorrelation peak over 60-400 Hz of the loudest 100 ms
        k = int(np.argmax(np.convolve(x ** 2, np.ones(1600), "valid")))
        seg = x[k:k + 1600] - x[k:k + 1600].mean()
        ac = np.correlate(seg, seg, "full")[seg.size - 1:]
        lag = np.arange(sr // 400, sr // 60)
        return sr / lag[np.argmax(ac[lag])]

    low, high = f0(pico_speak("nine", "pico:en-GB", 20, 165)[0]), f0(pico_speak("nine", "pico:en-GB", 80, 165)[0])
    assert 1.6 < high / low < 2.4  # pitch 20 -> 71%, 80 -> 141% of the voice's own F0: a ratio of 2


def test_pico_errors_are_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SynthesisError, match="unknown voice"):
        pico_speak("four", "pico:xx-XX", pitch=50, rate=165)
    monkeypatch.setitem(sys.modules, "ttspico", None)  # import fails as if it were not installed
    with pytest.raises(SynthesisError, match="pip install"):
        pico_speak("four", "pico:en-US", pitch=50, rate=165)


SENTENCE = "the quick brown fox jumps over the lazy dog."


@needs_espeak
def test_text_starting_with_a_dash_is_spoken_never_read_as_an_option(tmp_path: Path) -> None:
    """espeak-ng took a sentence "-f<path>" as its option -f and read that file aloud (here 60 sentences, about
    two minutes); after "--" it speaks the short text itself (the path spelled out: seconds). flite's -t and
    Festival's standard input take any text as text (checked on the command lines they get)."""
    long_text = tmp_path / "long.txt"
    long_text.write_text(" ".join([SENTENCE] * 60) + "\n")
    x, sr = tts.speak(f"-f{long_text}", "en-us", 50, 165)
    one_sentence, sr1 = tts.speak(SENTENCE, "en-us", 50, 165)
    assert x.size / sr < 10 * one_sentence.size / sr1, f"{x.size / sr:.1f} s: espeak-ng read the file"
    assert tts.espeak_command("-f/etc/hostname", "en-us", 50, 165)[-2:] == ["--", "-f/etc/hostname"]
    one, _ = tts.speak("one two", "en-us", 50, 165)  # "--" does not change ordinary text's audio
    plain = subprocess.run(["espeak-ng", "-v", "en-us", "-p", "50", "-s", "165", "--stdout", "one two"],
                           capture_output=True, check=True).stdout
    assert np.array_equal(one, sf.read(io.BytesIO(plain), dtype="float32")[0])
    if shutil.which("flite") is not None:
        cmd = voice_command("-voice", "flite:kal16", pitch=50, rate=165, wav="x.wav")
        assert cmd[cmd.index("-t") + 1] == "-voice"  # -t consumes the next argument as the text
    if shutil.which("text2wave") is not None:  # Festival gets the text on standard input only
        assert not any("hostname" in a for a in voice_command("-f/etc/hostname", "festival:ked", 50, 165, "x.wav"))


@needs_cmu
def test_flite_speaks_a_dash_text_as_text(tmp_path: Path) -> None:
    long_text = tmp_path / "long.txt"
    long_text.write_text(" ".join([SENTENCE] * 60) + "\n")
    one_sentence, sr1 = tts.speak(SENTENCE, "flite:kal16", 50, 165)
    for text in (f"-f{long_text}", "-f", "--help"):
        x, sr = tts.speak(text, "flite:kal16", 50, 165)
        assert 0.1 < x.size / sr < 10 * one_sentence.size / sr1, text
