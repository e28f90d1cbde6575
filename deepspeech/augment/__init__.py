"""Training-time perturbations: the waveform and feature pipelines (perturb: speed, gain, noise, reverberation, VTLP,
SpecAugment) and their primitives, noise superposition at a target SNR (noise) and synthetic room impulse responses
(reverb)."""
