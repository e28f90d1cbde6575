"""Synthetic speech corpora from espeak-ng (Debian package ``espeak-ng``): many voices, voice variants, pitches
and speaking rates, so that a model trained on few real speakers sees many "speakers" (in the spirit of Deep
Speech 1, arXiv 1412.5567 section 4: synthesising training data the real corpus lacks).

Besides espeak-ng's formant voices, the CMU voices of flite and Festival (Debian ``flite``, ``festival``,
``festvox-kdlpc16k``) are built from recordings of real speakers (diphone concatenation and statistical parametric
synthesis), so their spectra are much closer to human speech. They are named ``flite:NAME`` / ``festival:NAME``
(:data:`CMU_VOICES`); espeak's pitch (0-99, 50 = the voice's own) and rate (words per minute, 165 = the voice's
own) are translated to an F0 target and a duration stretch for them.

Festival's voices for other languages (Czech, Finnish, Italian, Catalan, Russian: :data:`FESTIVAL_VOICES`), also
recorded from real speakers, speak the English digit words respelled in their own orthography
(:data:`DIGIT_SPELLINGS`, "six" -> Czech "siks"): English digits with foreign accents, as non-native speakers say
them. They only speak the ten digit words; the HTS and unit-selection voices ignore the rate.

SVOX Pico (``pico:en-US``, ``pico:en-GB``, ``pico:de-DE``, ...: :data:`PICO_VOICES`; the ``ttspico`` package)
adds six more real speakers: two English HMM voices, and four that read respelled digits like the Festival ones.

Each utterance: espeak-ng speaks the text to 22.05 kHz WAV, leading/trailing silence is trimmed, the audio is
resampled to the target rate (8 kHz matches telephone-band corpora such as FSDD) and scaled to a random peak.
Everything is a pure function of (texts, seed): the same call writes the same corpus.
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from data_synthesis.parallel import imap_jobs
from deepspeech.data.manifest import Utterance, write_manifest

log = logging.getLogger(__name__)

# espeak-ng's own English voices (formant synthesis; the mbrola voices need the separate mbrola program).
ENGLISH_VOICES = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
                  "en-029", "en-us-nyc")
# Held out of training for the unseen-voice test sets: two accents, and every fifth voice variant (sorted by name).
ENGLISH_TEST_VOICES = ("en-gb-scotland", "en-us-nyc")
MANDARIN_VOICES = ("cmn-latn-pinyin",)  # speaks numbered pinyin ("ni3 hao3"); the plain cmn voice is garbled
# flite's voices, recorded from real speakers: name -> the voice's own mean F0 in Hz (its int_f0_target_mean).
FLITE_VOICES = {"flite:kal16": 105.0, "flite:awb": 110.0, "flite:rms": 100.0, "flite:slt": 170.0}
# The CMU voices: kal16 / ked: US male diphone voices; awb: Scottish male, rms: US male, slt: US female (CMU ARCTIC,
# clustergen).
CMU_VOICES = (*FLITE_VOICES, "festival:ked")
# Festival voices: name -> (Festival's voice, spelling language of DIGIT_SPELLINGS, Debian package).
FESTIVAL_VOICES = {
    "festival:ked": ("ked_diphone", "en", "festvox-kdlpc16k"),
    "festival:kal": ("kal_diphone", "en", "festvox-kallpc16k"),
    "festival:slt_hts": ("cmu_us_slt_arctic_hts", "en", "festvox-us-slt-hts"),
    "festival:czech_dita": ("czech_dita", "cs", "festvox-czech-dita"),
    "festival:czech_krb": ("czech_krb", "cs", "festvox-czech-krb"),
    "festival:czech_machac": ("czech_machac", "cs", "festvox-czech-machac"),
    "festival:czech_ph": ("czech_ph", "cs", "festvox-czech-ph"),
    "festival:fi_lj": ("suo_fi_lj_diphone", "fi", "festvox-suopuhe-lj"),
    "festival:fi_mv": ("hy_fi_mv_diphone", "fi", "festvox-suopuhe-mv"),
    "festival:it_lp": ("lp_diphone", "it", "festvox-italp16k"),
    "festival:it_pc": ("pc_diphone", "it", "festvox-itapc16k"),
    "festival:ca_ona": ("upc_ca_ona_hts", "ca", "festvox-ca-ona-hts"),
    "festival:ru_nsh": ("msu_ru_nsh_clunits", "ru", "festvox-ru"),
}
ACCENTED_VOICES = tuple(v for v, (_, lang, _) in FESTIVAL_VOICES.items() if lang != "en")
# SVOX Pico's voices (the ``ttspico`` package from PyPI, Apache-2.0: the Android engine with its six HMM voices,
# each trained on one real speaker's recordings): name -> spelling language of DIGIT_SPELLINGS. The German,
# Spanish, French and Italian voices speak respelled English digits, as the accented Festival voices do.
PICO_VOICES = {"pico:en-US": "en", "pico:en-GB": "en", "pico:de-DE": "de", "pico:es-ES": "es", "pico:fr-FR": "fr",
               "pico:it-IT": "it"}
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# The English digit words as a speaker of each language would write them to read them aloud.
DIGIT_SPELLINGS = {
    "cs": ("zírou", "uan", "tú", "trí", "fór", "fajf", "siks", "sevn", "ejt", "najn"),
    "fi": ("siirou", "van", "tuu", "trii", "foor", "faiv", "siks", "seven", "eit", "nain"),
    "it": ("ziro", "uan", "tu", "tri", "for", "faiv", "sics", "seven", "eit", "nain"),
    "ca": ("zírou", "uan", "tu", "trí", "for", "faiv", "sics", "séven", "eit", "nain"),
    "ru": ("зироу", "уан", "ту", "сри", "фо", "файв", "сикс", "сэвэн", "эйт", "найн"),
    "de": ("sierou", "uann", "tuh", "sri", "fohr", "faif", "sicks", "sewen", "ejt", "nain"),
    "es": ("síro", "uan", "tu", "tri", "for", "faif", "sics", "séven", "éit", "náin"),
    "fr": ("zirô", "ouane", "tou", "sri", "fore", "faïve", "sikse", "sévène", "eyte", "naïne"),
}
TEST_VARIANT_EVERY = 5
VOICE_SPLITS = ("all", "train", "test")


class SynthesisError(RuntimeError):
    """espeak-ng is missing or failed."""


@dataclass(frozen=True)
class TTSConfig:
    voices: tuple[str, ...] = ENGLISH_VOICES  # espeak-ng voice names, FLITE_VOICES or FESTIVAL_VOICES keys
    use_variants: bool = True  # add a random espeak voice variant (+m3, +f2, +croak, ...) to each espeak voice
    pitch: tuple[int, int] = (20, 80)  # espeak-ng -p range (0-99)
    rate: tuple[int, int] = (110, 220)  # espeak-ng -s range, words per minute
    sample_rate: int = 16_000  # output rate
    peak: tuple[float, float] = (0.1, 0.9)  # output peak amplitude range
    trim_db: float = -30.0  # silence threshold for trimming, relative to the loudest 10 ms
    margin_s: float = 0.02  # silence kept at each end
    variant_split: str = "all"  # all | train | test: which share of the voice variants to draw from

    def __post_init__(self) -> None:
        if self.variant_split not in VOICE_SPLITS:
            raise ValueError(f"variant_split must be one of {VOICE_SPLITS}")
        if not self.voices:
            raise ValueError("no voices")


def voice_split(lang: str, split: str) -> TTSConfig:
    """The voices and variants of a split: ``train`` and ``test`` share no voice/variant combination.

    English: test voices are :data:`ENGLISH_TEST_VOICES` with the held-out variants; train voices are the others
    with the remaining variants. Mandarin has one voice, so its speakers are split by variant only.
    """
    if split not in VOICE_SPLITS:
        raise ValueError(f"split must be one of {VOICE_SPLITS}")
    if lang == "zh":
        return TTSConfig(voices=MANDARIN_VOICES, variant_split=split)
    voices = {"all": ENGLISH_VOICES, "test": ENGLISH_TEST_VOICES,
              "train": tuple(v for v in ENGLISH_VOICES if v not in ENGLISH_TEST_VOICES)}[split]
    return TTSConfig(voices=voices, variant_split=split)


def split_variants(variants: Sequence[str], split: str) -> list[str]:
    """Every :data:`TEST_VARIANT_EVERY`-th variant in name order is a test variant ("all": input order)."""
    if split == "all":
        return list(variants)
    ordered = sorted(variants)
    test = set(ordered[::TEST_VARIANT_EVERY])
    return [v for v in ordered if (v in test) == (split == "test")]


def _espeak() -> str:
    return _program("espeak-ng", "espeak-ng")


def list_variants() -> list[str]:
    out = subprocess.run([_espeak(), "--voices=variant"], capture_output=True, text=True, check=True).stdout
    return [line.split()[4].removeprefix("!v/") for line in out.splitlines()[1:] if len(line.split()) > 4]


def _program(name: str, package: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise SynthesisError(f"{name} is not installed (Debian: apt-get install {package})")
    return exe


def is_espeak_voice(voice: str) -> bool:
    return ":" not in voice


def installed_festival_voices() -> list[str]:
    """The :data:`FESTIVAL_VOICES` keys whose voice Festival can load (empty without Festival)."""
    if shutil.which("festival") is None:
        return []
    res = subprocess.run(["festival", "--pipe"], input=b"(print (voice.list))", capture_output=True, timeout=60)
    listed = set(res.stdout.decode(errors="replace").strip().strip("()").split())
    return [key for key, (voice, _, _) in FESTIVAL_VOICES.items() if voice in listed]


def respell(text: str, lang: str) -> str:
    """English ``text`` as a voice of ``lang`` should read it: unchanged for English, else digit words respelled."""
    if lang == "en":
        return text
    spelled = dict(zip(DIGITS, DIGIT_SPELLINGS[lang], strict=True))
    words = text.lower().split()
    if not words or any(w not in spelled for w in words):
        raise SynthesisError(f"the {lang} voices speak only the digit words {', '.join(DIGITS)}, not {text!r}")
    return " ".join(spelled[w] for w in words)


def espeak_command(text: str, voice: str, pitch: int, rate: int) -> list[str]:
    """The espeak-ng command line that speaks ``text`` to standard output; the text follows "--", so whatever it
    starts with, espeak-ng never reads it as an option."""
    return [_espeak(), "-v", voice, "-p", str(pitch), "-s", str(rate), "--stdout", "--", text]


def voice_command(text: str, voice: str, pitch: int, rate: int, wav: str) -> list[str]:
    """The flite / Festival command line that speaks ``text`` into ``wav``: F0 target = the voice's own
    x 2^((pitch - 50) / 60) (pitch 20-80 spans 0.71-1.41x), duration stretch = 165 / rate. Festival's voices
    take the stretch only (Festival reads the text from standard input). flite takes the text as the value of
    ``-t``, which consumes the next argument whatever it starts with, so a text never becomes an option."""
    if voice not in FLITE_VOICES and voice not in FESTIVAL_VOICES:
        raise SynthesisError(f"unknown voice {voice!r}; the flite, Festival and pico voices are "
                             f"{', '.join(sorted([*FLITE_VOICES, *FESTIVAL_VOICES, *PICO_VOICES]))}")
    engine, name = voice.split(":")
    stretch = 165.0 / rate
    if engine == "flite":
        f0 = FLITE_VOICES[voice] * 2.0 ** ((pitch - 50) / 60)
        return [_program("flite", "flite"), "-voice", name, "--setf", f"duration_stretch={stretch:.3f}",
                "--setf", f"int_f0_target_mean={f0:.1f}", "-t", text, "-o", wav]
    festival_voice, _, package = FESTIVAL_VOICES[voice]
    return [_program("text2wave", f"festival {package}"), "-eval", f"(voice_{festival_voice})",
            "-eval", f"(Parameter.set 'Duration_Stretch {stretch:.3f})", "-o", wav]


def pico_speak(text: str, voice: str, pitch: int, rate: int) -> tuple[np.ndarray, int]:
    """One of :data:`PICO_VOICES` speaks ``text`` (respelled for its language) -> (float32 samples, 16000).

    Pico takes pitch and speed as percentages of the voice's own: pitch = 100 x 2^((pitch - 50) / 60), the F0
    factor the flite voices get, and speed = 100 x rate / 165. Each call loads a fresh engine (about 1 ms): an
    engine's output depends on what it spoke before, so a reused one would not be deterministic."""
    if voice not in PICO_VOICES:
        raise SynthesisError(f"unknown voice {voice!r}; the pico voices are {', '.join(PICO_VOICES)}")
    try:
        import ttspico
    except ImportError as e:
        raise SynthesisError("the pico voices need the ttspico package: pip install 'deepspeech[synth]'") from e
    try:
        engine = ttspico.TtsEngine(voice.split(":")[1])
    except RuntimeError as e:
        raise SynthesisError(f"{voice}: {e}") from e
    engine.set_property("pitch", round(100 * 2.0 ** ((pitch - 50) / 60)))
    engine.set_property("rate", round(100 * rate / 165))
    pcm = engine.speak(respell(text, PICO_VOICES[voice]))
    if not pcm:
        raise SynthesisError(f"{voice} gave no audio for {text!r}")
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0, 16_000


def speak(text: str, voice: str, pitch: int, rate: int) -> tuple[np.ndarray, int]:
    """espeak-ng, flite, Festival or SVOX Pico -> (samples float32, sample rate)."""
    if voice.startswith("pico:"):
        return pico_speak(text, voice, pitch, rate)
    if is_espeak_voice(voice):
        # "--" ends the options: a text such as "-f/etc/hostname" is spoken, never read as an option (-f would
        # speak that file). Same audio as the text without it.
        res = subprocess.run(espeak_command(text, voice, pitch, rate), capture_output=True, timeout=60)
        if res.returncode != 0 or not res.stdout:
            raise SynthesisError(f"espeak-ng failed for voice {voice!r}: {res.stderr.decode(errors='replace')[:200]}")
        x, sr = sf.read(io.BytesIO(res.stdout), dtype="float32")
        return x, sr
    with tempfile.TemporaryDirectory() as tmp:
        wav = str(Path(tmp) / "out.wav")
        # Festival reads the text from standard input; flite takes it on the command line (-t).
        lang = FESTIVAL_VOICES[voice][1] if voice in FESTIVAL_VOICES else "en"
        res = subprocess.run(voice_command(text, voice, pitch, rate, wav), input=respell(text, lang).encode(),
                             capture_output=True, timeout=60)
        err = res.stderr.decode(errors="replace")
        if voice in FESTIVAL_VOICES and "unbound variable : voice_" in err:
            raise SynthesisError(f"{voice} is not installed (Debian: apt-get install {FESTIVAL_VOICES[voice][2]})")
        if res.returncode != 0 or not Path(wav).is_file():
            raise SynthesisError(f"{voice} failed (exit status {res.returncode}): {err[:200]}")
        x, sr = sf.read(wav, dtype="float32")
    return x, sr


def trim(x: np.ndarray, sr: int, threshold_db: float, margin_s: float) -> np.ndarray:
    """Cut leading and trailing frames quieter than ``threshold_db`` below the loudest 10 ms frame."""
    hop = max(1, sr // 100)
    n = x.size // hop
    if n == 0:
        return x
    energy = (x[: n * hop].reshape(n, hop) ** 2).mean(1)
    loud = np.nonzero(energy > energy.max() * 10 ** (threshold_db / 10))[0]
    if loud.size == 0:
        return x
    m = int(margin_s * sr)
    return x[max(loud[0] * hop - m, 0): min((loud[-1] + 1) * hop + m, x.size)]


def _render(job: tuple[int, str, str, int, int, float, str, str]) -> Utterance | str:
    """Speak one text and write it; returns the utterance, or a message saying why it was skipped."""
    k, text, voice, pitch, rate, peak, out, lang = job
    cfg: TTSConfig = _CFG["cfg"]  # type: ignore[assignment]
    spoken = _CFG["spoken"]
    try:
        x, sr = speak(spoken(text) if callable(spoken) else text, voice, pitch, rate)
    except (SynthesisError, subprocess.TimeoutExpired) as e:
        return f"{text!r}: {e}"
    x = trim(x, sr, cfg.trim_db, cfg.margin_s)
    y = soxr.resample(x, sr, cfg.sample_rate).astype(np.float32)
    if y.size == 0 or not np.any(y):
        return f"{text!r} with {voice} gave silence"
    y = y / np.abs(y).max() * peak
    path = Path(out) / "audio" / f"tts_{k:06d}.flac"
    sf.write(path, y, cfg.sample_rate, subtype="PCM_16")
    return Utterance(str(path), text, y.size / cfg.sample_rate, f"{voice}/p{pitch}/s{rate}", lang)


_CFG: dict[str, object] = {}


def _init(cfg: TTSConfig, spoken: Callable[[str], str] | None) -> None:
    _CFG.update(cfg=cfg, spoken=spoken)


def synthesize_corpus(texts: Sequence[str], out_dir: str | Path, cfg: TTSConfig = TTSConfig(), seed: int = 0,
                      lang: str = "en", progress: bool = True, workers: int = 1,
                      spoken: Callable[[str], str] | None = None) -> list[Utterance]:
    """Speak each text once with a random voice/variant/pitch/rate; write FLAC files and ``manifest.jsonl``.

    The voice, pitch, rate and level of every utterance are drawn in order from one generator seeded by ``seed``
    before any audio is made, so the corpus does not depend on ``workers``. ``spoken`` maps a transcript to what
    espeak-ng is given (Mandarin: characters -> numbered pinyin); the manifest keeps the transcript.
    """
    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    espeak = any(is_espeak_voice(v) for v in cfg.voices)
    variants = split_variants(list_variants(), cfg.variant_split) if cfg.use_variants and espeak else []
    for voice in sorted({v for v in cfg.voices if not is_espeak_voice(v)}):
        speak("one", voice, 50, 165)  # a missing or broken voice fails here, not as warnings per utterance
    jobs = []
    for k, text in enumerate(texts):
        voice = str(rng.choice(cfg.voices))
        if variants and is_espeak_voice(voice):
            voice += "+" + str(rng.choice(variants))
        pitch, rate = int(rng.integers(cfg.pitch[0], cfg.pitch[1] + 1)), int(rng.integers(cfg.rate[0], cfg.rate[1] + 1))
        jobs.append((k, text, voice, pitch, rate, float(rng.uniform(*cfg.peak)), str(out), lang))
    utts: list[Utterance] = []
    for r in imap_jobs(_render, jobs, workers, _init, (cfg, spoken), "synthesising", progress):
        if isinstance(r, str):
            log.warning("skipped: %s", r)
        else:
            utts.append(r)
    if not utts:
        raise SynthesisError("no utterance was synthesised")
    write_manifest(out / "manifest.jsonl", utts)
    return utts
