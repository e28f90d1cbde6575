"""Data synthesis: synthetic speech corpora (espeak-ng). Noise superposition and the rest of DS1 section 4 build
on deepspeech.augment."""
