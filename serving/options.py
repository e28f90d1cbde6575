"""A stream's options: the query string (``?sample_rate=``) or the first text frame ``{"type": "start", ...}``.

Every field is bounded; a start message with an unknown field, a wrong type or a value out of bounds is refused with
one message naming the field (the connection closes with 1008). Without a start message a stream behaves as before
this message existed: no endpointing, one final at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from deepspeech.frontend.audio import SAMPLE_RATE
from deepspeech.inference.streaming import EndpointConfig

MIN_RATE, MAX_RATE = 8_000, 96_000
MAX_ALTERNATIVES = 10
MAX_PARTIAL_INTERVAL_MS = 10_000.0
MAX_HOTWORDS, MAX_HOTWORD_CHARS = 100, 64
MAX_HOTWORD_WEIGHT = 100.0
START_FIELDS = ("type", "sample_rate", "endpointing", "alternatives", "partial_interval_ms", "hotwords",
                "hotword_weight")
ENDPOINT_FIELDS = ("silence_after_speech_s", "max_segment_s", "quiet_dbfs", "preroll_s", "tail_s")


@dataclass(frozen=True)
class StreamOptions:
    sample_rate: int = SAMPLE_RATE  # Hz of the client's PCM
    endpoint: EndpointConfig | None = None  # None: no segments, one final at the end (the default)
    alternatives: int = 1  # N-best entries in each final (1: none listed)
    partial_interval_ms: float = 0.0  # at least this much audio between two partials (0: one per step)
    hotwords: tuple[str, ...] = ()  # boosted in the final's beam search
    hotword_weight: float | None = None  # None: the decoder's default

    def __post_init__(self) -> None:
        if not MIN_RATE <= self.sample_rate <= MAX_RATE:
            raise ValueError(f"sample_rate must be an integer in [{MIN_RATE}, {MAX_RATE}]")
        if not 1 <= self.alternatives <= MAX_ALTERNATIVES:
            raise ValueError(f"alternatives must be an integer in [1, {MAX_ALTERNATIVES}]")
        if not 0 <= self.partial_interval_ms <= MAX_PARTIAL_INTERVAL_MS:
            raise ValueError(f"partial_interval_ms must be in [0, {MAX_PARTIAL_INTERVAL_MS:g}]")
        if len(self.hotwords) > MAX_HOTWORDS or not all(0 < len(w) <= MAX_HOTWORD_CHARS for w in self.hotwords):
            raise ValueError(f"hotwords: at most {MAX_HOTWORDS} non-empty strings of at most {MAX_HOTWORD_CHARS} "
                             "characters")
        if self.hotword_weight is not None and not 0 <= self.hotword_weight <= MAX_HOTWORD_WEIGHT:
            raise ValueError(f"hotword_weight must be in [0, {MAX_HOTWORD_WEIGHT:g}]")


def _number(obj: dict[str, Any], key: str, integer: bool = False) -> Any:
    """``obj[key]`` when it is a finite number (an integer when ``integer``); huge integers are refused here, before
    ``float()`` could overflow on them."""
    v = obj[key]
    ok = isinstance(v, int) if integer else isinstance(v, int | float)
    if isinstance(v, bool) or not ok:
        raise ValueError(f"{key} must be {'an integer' if integer else 'a number'}")
    if (isinstance(v, int) and abs(v) > 10**9) or (isinstance(v, float) and not math.isfinite(v)):
        raise ValueError(f"{key} is out of bounds")
    return v


def from_query(query: Any) -> StreamOptions:
    """The options of a stream without a start message: ``?sample_rate=`` only."""
    try:
        rate = int(query.get("sample_rate", SAMPLE_RATE))
    except ValueError:
        raise ValueError(f"sample_rate must be an integer in [{MIN_RATE}, {MAX_RATE}]") from None
    return StreamOptions(sample_rate=rate)


def from_start(obj: Any, base: StreamOptions) -> StreamOptions:
    """A start message (parsed JSON) over ``base`` (the query string's options). Raises ValueError with the reason."""
    if not isinstance(obj, dict) or obj.get("type") != "start":
        raise ValueError('the start message must be a JSON object {"type": "start", ...}')
    unknown = sorted(set(obj) - set(START_FIELDS))
    if unknown:
        raise ValueError(f"unknown start field(s) {', '.join(map(repr, unknown))[:200]}; "
                         f"known: {', '.join(START_FIELDS[1:])}")
    kw: dict[str, Any] = {}
    if "sample_rate" in obj:
        kw["sample_rate"] = _number(obj, "sample_rate", integer=True)
    if "alternatives" in obj:
        kw["alternatives"] = _number(obj, "alternatives", integer=True)
    if "partial_interval_ms" in obj:
        kw["partial_interval_ms"] = float(_number(obj, "partial_interval_ms"))
    if "hotword_weight" in obj:
        kw["hotword_weight"] = float(_number(obj, "hotword_weight"))
    if "hotwords" in obj:
        words = obj["hotwords"]
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ValueError("hotwords must be a list of strings")
        if len(words) > MAX_HOTWORDS:
            raise ValueError(f"hotwords: at most {MAX_HOTWORDS}")
        kw["hotwords"] = tuple(sorted({" ".join(w.split()) for w in words} - {""}))  # one decoder per distinct set
    ep = obj.get("endpointing", False)
    if isinstance(ep, dict):
        bad = sorted(set(ep) - set(ENDPOINT_FIELDS))
        if bad:
            raise ValueError(f"unknown endpointing field(s) {', '.join(map(repr, bad))[:200]}; "
                             f"known: {', '.join(ENDPOINT_FIELDS)}")
        kw["endpoint"] = EndpointConfig(**{k: float(_number(ep, k)) for k in ep})
    elif isinstance(ep, bool):
        kw["endpoint"] = EndpointConfig() if ep else None
    else:
        raise ValueError("endpointing must be true, false or an object of " + ", ".join(ENDPOINT_FIELDS))
    return StreamOptions(**{**base.__dict__, **kw})
