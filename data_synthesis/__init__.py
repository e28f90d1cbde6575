"""Data synthesis (Deep Speech 1, arXiv 1412.5567 section 4): offline corpus augmentation (:mod:`.offline`),
connected utterances (:mod:`.concat`), synthetic speech corpora from espeak-ng and other engines (:mod:`.tts`,
:mod:`.corpus`) and voice conversion (:mod:`.voice`). The primitives they share with training-time augmentation,
noise superposition of many tracks at a target SNR and reverberation, live in the core (deepspeech.augment.noise,
deepspeech.augment.reverb); the training-time pipeline that applies them is deepspeech.augment.perturb."""
