"""Data synthesis (Deep Speech 1, arXiv 1412.5567 section 4): noise superposition of many tracks at a target SNR
(:mod:`.noise`), reverberation (:mod:`.reverb`), offline corpus augmentation (:mod:`.offline`) and synthetic
speech corpora from espeak-ng (:mod:`.tts`). The training-time pipeline that applies them is deepspeech.augment."""
