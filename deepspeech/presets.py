"""Presets: functions that return complete training configurations.

Model presets (``tiny``, ``small``, ``ds2-en``, ``ds2-streaming`` and their ``-zh`` counterparts) fix the
architecture and sensible optimiser settings; recipes (``digits-en``, ``aishell-sample-zh``, ``an4-en``, ...) add
data and budgets.
The vocabulary size is filled in from the tokenizer when training starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from deepspeech.augment.perturb import AugmentConfig
from deepspeech.config import DataConfig, OptimConfig, TrainConfig
from deepspeech.model.config import ConvSpec, ModelConfig, ds2_convs


def _tiny_model() -> ModelConfig:
    # 8 channels keep the 2D front end cheap on 2 CPU cores; ~1.5M parameters.
    return ModelConfig(convs=(ConvSpec(8, (41, 11), (2, 2)), ConvSpec(8, (21, 11), (2, 1))),
                       rnn_type="gru", rnn_layers=3, rnn_hidden=192, bidirectional=True)


def tiny(lang: str = "en") -> TrainConfig:
    """Trains on 2 CPU cores in minutes."""
    return TrainConfig(name=f"tiny-{lang}", model=_tiny_model(), data=DataConfig(lang=lang, max_frames=16_000),
                       optim=OptimConfig(name="adamw", lr=2e-3, weight_decay=1e-2, schedule="cosine",
                                         warmup_steps=100, grad_clip=5.0), epochs=20)


def small(lang: str = "en") -> TrainConfig:
    """A few million parameters: hours of audio on CPU, the workhorse for synthetic-sentence recipes."""
    model = ModelConfig(convs=(ConvSpec(16, (41, 11), (2, 2)), ConvSpec(16, (21, 11), (2, 1))),
                        rnn_type="gru", rnn_layers=3, rnn_hidden=384, bidirectional=True)
    return TrainConfig(name=f"small-{lang}", model=model, data=DataConfig(lang=lang, max_frames=24_000),
                       optim=OptimConfig(name="adamw", lr=1.5e-3, weight_decay=1e-2, schedule="cosine",
                                         warmup_steps=300, grad_clip=5.0), epochs=20)


def ds2(lang: str = "en") -> TrainConfig:
    """The DS2 paper's ~100M-parameter configuration: 2 conv layers + 7 bidirectional GRU layers (Table 4)."""
    model = ModelConfig(convs=ds2_convs(2), rnn_type="gru", rnn_layers=7, rnn_hidden=1088, bidirectional=True)
    return TrainConfig(name=f"ds2-{lang}", model=model, data=DataConfig(lang=lang, max_frames=64_000, max_batch=64),
                       optim=OptimConfig(name="sgd", lr=3e-4, momentum=0.99, schedule="anneal", anneal=1.2,
                                         grad_clip=400.0), epochs=20)


def ds2_streaming(lang: str = "en") -> TrainConfig:
    """7 unidirectional GRUs (~70M parameters) with a lookahead (row) convolution of 10 output frames = 200 ms
    (DS2 section 3.5); 2D convolutions see 5 + 10 input frames ahead."""
    base = ds2(lang)
    model = dataclasses.replace(base.model, rnn_hidden=1280, bidirectional=False, lookahead=10)
    return dataclasses.replace(base, name=f"ds2-streaming-{lang}", model=model)


def tiny_streaming(lang: str = "en") -> TrainConfig:
    """The streaming family's debug model: ``tiny`` made unidirectional with a 10-frame lookahead."""
    base = tiny(lang)
    model = dataclasses.replace(base.model, rnn_hidden=256, bidirectional=False, lookahead=10)
    return dataclasses.replace(base, name=f"tiny-streaming-{lang}", model=model)


def digits_en() -> TrainConfig:
    """The main job: ``tiny`` on the Free Spoken Digit Dataset train speakers plus 4,998 synthetic digits
    (``data/tts_digits``: espeak-ng; ``tts_digits_cmu``: flite and Festival's CMU voices; ``tts_digits_accented``:
    Festival's Czech, Finnish, Italian, Catalan and Russian voices; ``tts_digits_pico``: SVOX Pico), validated on
    george. Three real speakers, so unseen speakers are met through the synthetic voices, augmentation (40% of
    utterances with 1-3 noise tracks at 0-30 dB SNR, DS2 arXiv 1512.02595 section 5.1), endpointing
    (``features.trim_db=40``), smoothed mean normalisation (``utterance_norm="smooth_mean"``, 150 Hz) and the
    test-time warp search (``features.warp_search``, :mod:`deepspeech.inference.warp_search`). Dropout 0.3, final
    epoch kept. Each choice won a cross-validation over held-out speakers (``recipes/digits_cv.sh``); the figures
    are in docs/digits-en-experiments.md and the model card."""
    base = tiny("en")
    data = dataclasses.replace(
        base.data, train="data/fsdd/train.jsonl,data/tts_digits/manifest.jsonl,data/tts_digits_cmu/manifest.jsonl,"
        "data/tts_digits_accented/manifest.jsonl,data/tts_digits_pico/manifest.jsonl",
        dev="data/fsdd/dev.jsonl", max_frames=6_000, max_batch=32)
    return dataclasses.replace(
        base, name="digits-en", data=data, epochs=15, save_every_steps=100, select="last",
        model=dataclasses.replace(base.model, dropout=0.3),
        features=dataclasses.replace(base.features, utterance_norm="smooth_mean", norm_smooth_hz=150.0, trim_db=40.0,
                                     warp_search=(0.9, 0.95, 1.0, 1.05, 1.1)),
        augment=AugmentConfig(prob=0.8, gain_db=(-24.0, 6.0), noise_prob=0.5, noise_snr_db=(0.0, 30.0),
                              noise_tracks=(1, 3), noise_manifest="data/noise/train.jsonl"),
        optim=dataclasses.replace(base.optim, warmup_steps=50))


def streaming_en() -> TrainConfig:
    """The streaming server's default model: ``tiny-streaming`` (3 unidirectional GRUs of 256 + a 200 ms lookahead
    convolution) on global feature statistics only (``utterance_norm="none"``: a stream cannot know its own mean
    in advance; gain augmentation teaches level invariance instead). Data as ``digits-en`` had it when the shipped
    model was trained (FSDD train speakers and espeak-ng digits, without the CMU voices) plus 800 connected digit
    strings joined from the same training utterances (``deepspeech synth concat``, built by
    ``recipes/streaming_en.sh``), so the model learns word boundaries and pauses, as a live stream has them.
    Model selection on george's isolated digits and strings."""
    base = tiny_streaming("en")
    digits = digits_en()
    train = "data/fsdd/train.jsonl,data/tts_digits/manifest.jsonl,data/digit_strings/train/manifest.jsonl"
    data = dataclasses.replace(digits.data, train=train,
                               dev="data/fsdd/dev.jsonl,data/digit_strings/dev/manifest.jsonl")
    return dataclasses.replace(base, name="streaming-en", data=data, epochs=10, save_every_steps=100,
                               augment=digits.augment, optim=digits.optim)


def aishell_sample_zh() -> TrainConfig:
    """``tiny-zh`` on the AISHELL-1 sample: S0150 first 130 utterances (train), last 20 (dev). Tiny data."""
    base = tiny("zh")
    data = dataclasses.replace(base.data, train="data/aishell_sample/train.jsonl",
                               dev="data/aishell_sample/dev.jsonl", max_frames=16_000, max_batch=16)
    return dataclasses.replace(base, name="aishell-sample-zh", data=data, epochs=12, save_every_steps=50,
                               optim=dataclasses.replace(base.optim, warmup_steps=20))


def _sentence_noise() -> AugmentConfig:
    """DS2's share of noisy utterances: 80% augmented, half of those (40%) with 1-3 noise tracks at 0-30 dB."""
    return AugmentConfig(prob=0.8, gain_db=(-18.0, 6.0), noise_prob=0.5, noise_snr_db=(0.0, 30.0),
                         noise_tracks=(1, 3), noise_manifest="data/noise/train.jsonl")


def sentences_en() -> TrainConfig:
    """``small`` on about 5 hours of synthetic English sentences (``recipes/sentences_en.sh`` builds
    ``data/sentences_en``: Project Gutenberg text, espeak-ng training voices), with noise synthesis; dev is other
    training-text sentences in training voices. Four epochs take about 30 minutes on 2 CPU cores; the recipe adds
    2 resumed epochs and 8 of fine-tuning with VTLP (``init_from``)."""
    base = small("en")
    data = dataclasses.replace(base.data, train="data/sentences_en/train/manifest.jsonl",
                               dev="data/sentences_en/dev/manifest.jsonl", max_duration_s=16.0, max_batch=16)
    return dataclasses.replace(base, name="sentences-en", data=data, epochs=4, save_every_steps=200,
                               features=dataclasses.replace(base.features, utterance_norm="mean"),
                               augment=_sentence_noise(), optim=dataclasses.replace(base.optim, warmup_steps=200))


def sentences_zh() -> TrainConfig:
    """``small-zh`` on about 5 hours of synthetic Mandarin sentences (``recipes/sentences_zh.sh`` builds
    ``data/sentences_zh`` from Lu Xun and PRC statute text, spoken as numbered pinyin by espeak-ng) plus the
    AISHELL-1 sample's training split (real speech, S0150), with noise synthesis. Dev: synthetic dev sentences and
    the AISHELL dev split; model selection by CER."""
    base = small("zh")
    data = dataclasses.replace(
        base.data, train="data/sentences_zh/train/manifest.jsonl,data/aishell_sample/train.jsonl",
        dev="data/sentences_zh/dev/manifest.jsonl,data/aishell_sample/dev.jsonl", max_duration_s=16.0, max_batch=16,
        units="pinyin")
    return dataclasses.replace(base, name="sentences-zh", data=data, epochs=4, save_every_steps=200,
                               features=dataclasses.replace(base.features, utterance_norm="mean"),
                               augment=_sentence_noise(), optim=dataclasses.replace(base.optim, warmup_steps=200))


def _an4_model() -> ModelConfig:
    # Between tiny (8 channels, 3 x 192) and small (16, 3 x 384): 16 channels and 3 bidirectional GRUs of 320,
    # 4.4M parameters: 17.7 MB in float32, 8.8 MB in float16.
    return ModelConfig(convs=(ConvSpec(16, (41, 11), (2, 2)), ConvSpec(16, (21, 11), (2, 1))),
                       rnn_type="gru", rnn_layers=3, rnn_hidden=320, bidirectional=True, dropout=0.2)


def an4_en() -> TrainConfig:
    """CMU AN4 (spelled letters, digits, dates, short commands; close-talking microphone, 16 kHz) on the data kit's
    protocol: trained on AN4 train less the six dev speakers (869 utterances, 68 speakers, 39 minutes), dev = those
    six (79), reported on AN4's own test set (130, 10 unseen speakers). ``recipes/an4.sh`` imports the kit
    (``../shared/data/en_an4``) into ``data/an4/``, trains, builds a word 4-gram of the training transcripts, tunes
    its weights on dev and scores test. The peers' reference: deepspeech.pytorch's pretrained AN4 model reads
    9.573% WER / 5.515% CER on AN4 test, trained on AN4's whole 948-utterance training set (ours less dev).

    Model: ``_an4_model``, 3 bidirectional GRUs of 320 (4.4M parameters), with dropout 0.2 on each recurrent
    layer's output (digits-en's 0.3 was for three speakers; here 68). Per-utterance mean normalisation (cepstral
    mean subtraction, as the sentence models have it): AN4's sessions differ in channel. Batches of at most 16
    utterances: 56 updates an epoch.

    39 minutes of speech, so most of every epoch is augmented (DS2's shares, arXiv 1512.02595 section 5.1): 80% of
    the utterances get speed perturbation 0.9-1.1 (Ko et al., 2015), gain -18..+6 dB, vocal tract length
    perturbation 0.9-1.1 (for unseen speakers; Jaitly and Hinton, 2013) and two SpecAugment frequency masks (up to
    20 bins) and time masks (up to 20 frames; Park et al., 2019); half of those (40% in all) get 1-3 noise tracks at
    5-30 dB SNR (the shipped training noise clips ``data/noise``, coloured noise, babble of the training corpus).
    The test speech is clean, so the SNR floor is 5 dB, not the sentence recipes' 0.

    AdamW on a cosine schedule over 140 epochs (7,840 updates). One epoch (dev scored, checkpoint saved) took 45 s
    on 2 idle CPU cores (72 s on one), so training takes about 1 h 45 min there. The final epoch is kept
    (``select="last"``; dev is scored each epoch and reported): on digits-en's cross-validation the final epoch
    beat the best-on-dev pick in 13 of 15 runs, and one word of dev's 469 is 0.2% WER. No setting here has been
    tuned on AN4 yet: all were chosen before the first run."""
    base = small("en")
    data = dataclasses.replace(base.data, train="data/an4/train.jsonl", dev="data/an4/dev.jsonl",
                               max_frames=8_000, max_batch=16)
    augment = AugmentConfig(prob=0.8, speed=(0.9, 1.1), gain_db=(-18.0, 6.0), vtlp=(0.9, 1.1), noise_prob=0.5,
                            noise_snr_db=(5.0, 30.0), noise_tracks=(1, 3), noise_manifest="data/noise/train.jsonl")
    return dataclasses.replace(
        base, name="an4-en", model=_an4_model(), data=data, epochs=140, save_every_steps=100, select="last",
        features=dataclasses.replace(base.features, utterance_norm="mean"), augment=augment,
        optim=dataclasses.replace(base.optim, warmup_steps=200))


# English train/dev manifests written by recipes/en.sh from the data kit (``data import kit``), plus the repository's
# FSDD speakers and the synthetic digit voices of ``digits-en``.
_EN_KIT = ("an4", "minilibrispeech", "commonvoice", "speech_commands")
_EN_TRAIN = ",".join([*(f"data/kit/en_{s}/train.jsonl" for s in _EN_KIT), "data/fsdd/train.jsonl",
                      "data/tts_digits/manifest.jsonl", "data/tts_digits_cmu/manifest.jsonl",
                      "data/tts_digits_accented/manifest.jsonl", "data/tts_digits_pico/manifest.jsonl"])
_EN_DEV = "data/kit/en_dev.jsonl"  # the four kit dev splits and FSDD george, joined by recipes/en.sh


def _en_augment(gain_db: tuple[float, float] = (-18.0, 6.0)) -> AugmentConfig:
    """``an4-en``'s augmentation (DS2's shares): 80% of utterances speed-, gain- and VTLP-perturbed with SpecAugment
    masks, 40% with 1-3 noise tracks at 5-30 dB SNR (shipped training noise clips, coloured noise, babble)."""
    return AugmentConfig(prob=0.8, speed=(0.9, 1.1), gain_db=gain_db, vtlp=(0.9, 1.1), noise_prob=0.5,
                         noise_snr_db=(5.0, 30.0), noise_tracks=(1, 3), noise_manifest="data/noise/train.jsonl")


def en() -> TrainConfig:
    """One English model on every English train split we have: the data kit's AN4 (0.65 h), Mini LibriSpeech
    (4.4 h), Common Voice (4.1 h) and Speech Commands (0.93 h) train splits, FSDD's train speakers (0.2 h) and the
    four synthetic digit sets of ``digits-en`` (0.63 h): 10.9 h. Dev (model report and LM tuning): the kit's four dev
    splits plus FSDD george joined into one manifest (1.1 h), so no one domain picks the weights.
    ``recipes/en.sh`` imports, trains, builds the Gutenberg + train-transcript word 4-gram, tunes it on dev and
    scores every English test split.

    Model: 16-channel 2D front end and 4 bidirectional GRUs of 384 (7.8M parameters: 31 MB in float32, 16 MB in
    float16). About 14 times AN4's audio: one layer deeper than ``an4-en`` (3 x 320) and wider, yet under DS2's
    scale (3 x 384 in ``small`` is for 5 h of synthetic speech; 3 x 512 would be 10M parameters, 40 MB in
    float32, for less depth). Dropout 0.2 on each recurrent layer's output, per-utterance mean normalisation (the
    sources differ in channel), ``_en_augment``.

    AdamW on a cosine schedule over 30 epochs (about 20,000 updates of at most 24 utterances) peaking at 6e-4
    after 1,000 warm-up steps; the final epoch is kept (``select="last"``, as ``an4-en``). The first run, at
    ``small``'s 1.5e-3 after 500, skipped 10 updates for non-finite gradient norms in its first 870 steps and read
    dev CER 97% after one epoch; it was stopped there (the loss rising over epoch 0 is SortaGrad's growing lengths,
    seen at 6e-4 too), so which rate is better here is not measured. One epoch took about 33 minutes on one CPU
    thread beside another training run (20 s of audio a second), so 30 epochs take about 16 hours there, in
    float32; bf16 autocast (``cpu_amp``, on CPUs with AMX or AVX512-BF16) makes a step 1.37x faster at the same
    loss curve (``bench/amp.py``), so the real-speech presets (``en``, ``en-streaming``, ``zh``) train with it."""
    base = small("en")
    model = ModelConfig(convs=(ConvSpec(16, (41, 11), (2, 2)), ConvSpec(16, (21, 11), (2, 1))),
                        rnn_type="gru", rnn_layers=4, rnn_hidden=384, bidirectional=True, dropout=0.2)
    data = dataclasses.replace(base.data, train=_EN_TRAIN, dev=_EN_DEV, max_frames=16_000, max_batch=24,
                               max_duration_s=20.0)
    return dataclasses.replace(
        base, name="en", model=model, data=data, epochs=30, save_every_steps=200, select="last",
        features=dataclasses.replace(base.features, utterance_norm="mean"), augment=_en_augment(),
        optim=dataclasses.replace(base.optim, lr=6e-4, warmup_steps=1_000), cpu_amp=True)


def en_streaming() -> TrainConfig:
    """``en``'s data and schedule for the streaming server: 4 unidirectional GRUs of 512 with a 10-frame (200 ms)
    lookahead convolution (6.6M parameters: 26 MB in float32, 13 MB in float16), built as ``tiny_streaming`` builds
    its model. Global feature statistics only (``utterance_norm="none"``: a stream cannot know its own mean in
    advance), so the gain augmentation is widened to -24..+6 dB (as ``digits-en``) to teach level invariance.
    Estimated 15 minutes an epoch on 2 CPU cores, about 8 hours for 30 epochs."""
    base = en()
    model = dataclasses.replace(base.model, rnn_hidden=512, bidirectional=False, lookahead=10)
    return dataclasses.replace(base, name="en-streaming", model=model,
                               features=dataclasses.replace(base.features, utterance_norm="none"),
                               augment=_en_augment(gain_db=(-24.0, 6.0)))


def zh() -> TrainConfig:
    """Mandarin on real speech: the data kit's zh_commonvoice train split (1,953 utterances, 219 speakers, 3.7 h)
    plus the AISHELL-1 sample's train part (S0150, first 130 utterances, 0.17 h) as ``aishell-sample-zh`` has it;
    dev = zh_commonvoice dev (14 speakers); ``recipes/zh.sh`` scores zh_commonvoice test by CER.

    Units: numbered-pinyin letters (``units="pinyin"``, as ``sentences-zh``): about 2,000 training utterances
    cannot teach some 2,500 characters (``sentences-zh``'s character model mostly emitted blanks); the character
    4-gram and pinyin lexicon (``hanzi/``) turn syllables into characters. Model: ``small``'s 3 bidirectional GRUs
    of 384 (6.0M parameters: 24 MB in float32) with dropout 0.2: for 3.8 h a deeper model would mostly memorise
    219 speakers. ``_en_augment``'s perturbations (language-independent) over 40 epochs; final epoch kept.
    Estimated 5 minutes an epoch on 2 CPU cores (AN4's 45 s for 48 minutes, scaled), about 3.5 hours in all."""
    base = small("zh")
    data = dataclasses.replace(base.data, train="data/kit/zh_commonvoice/train.jsonl,data/aishell_sample/train.jsonl",
                               dev="data/kit/zh_commonvoice/dev.jsonl", units="pinyin", max_frames=16_000,
                               max_batch=24, max_duration_s=20.0)
    return dataclasses.replace(
        base, name="zh", model=dataclasses.replace(base.model, dropout=0.2), data=data, epochs=40,
        save_every_steps=200, select="last", features=dataclasses.replace(base.features, utterance_norm="mean"),
        augment=_en_augment(), optim=dataclasses.replace(base.optim, warmup_steps=300), cpu_amp=True)


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "tiny": lambda: tiny("en"),
    "small": lambda: small("en"),
    "ds2-en": lambda: ds2("en"),
    "ds2-streaming": lambda: ds2_streaming("en"),
    "tiny-streaming": lambda: tiny_streaming("en"),
    "tiny-zh": lambda: tiny("zh"),
    "small-zh": lambda: small("zh"),
    "ds2-zh": lambda: ds2("zh"),
    "ds2-streaming-zh": lambda: ds2_streaming("zh"),
    "tiny-streaming-zh": lambda: tiny_streaming("zh"),
    "digits-en": digits_en,
    "streaming-en": streaming_en,
    "aishell-sample-zh": aishell_sample_zh,
    "sentences-en": sentences_en,
    "sentences-zh": sentences_zh,
    "an4-en": an4_en,
    "en": en,
    "en-streaming": en_streaming,
    "zh": zh,
}


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]()
