"""Audio in, features out: reading and resampling audio (audio), spectrograms (features), silence trimming
(silence), and the one front end that joins them for every route (front_end)."""
