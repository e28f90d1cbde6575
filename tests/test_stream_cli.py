"""`deepspeech stream`'s start-message options against a real `deepspeech serve` (models/streaming-en on a loopback
port, the server and recording of tests/test_endpointing.py): segment finals with their times and alternatives come
back and are printed one per line, hotwords reach the server's decoder (whose refusal is the one error line), a bad
option gets the server's reason, and with no option the client sends no start message (the old protocol)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deepspeech.cli import serve as serve_cli
from serving.options import StreamOptions, from_start
from tests.conftest import run_cli
from tests.test_endpointing import RATE, recording, server  # noqa: F401  (module-scoped fixtures, shared)

SEGMENT_LINE = re.compile(r"^\[\s*(\d+\.\d\d) -\s*(\d+\.\d\d)\] (\S.*)$")
ALT_LINE = re.compile(r"^  (\d\.\d{4})  (.*)$")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    full = ["stream", *argv]
    serve_cli.add_parser(sub, full)
    return parser.parse_args(full)


@pytest.fixture(scope="module")
def three_digits(recording: tuple[Path, np.ndarray, list[float]],  # noqa: F811
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recording's first three digits (two pauses), as 16-bit PCM."""
    _, audio, centres = recording
    path = tmp_path_factory.mktemp("cli") / "three.wav"
    sf.write(str(path), np.round(audio[: int((centres[2] + 0.5) * RATE)] * 32768).astype(np.int16), RATE,
             subtype="PCM_16")
    return path


def test_options_make_the_start_message_and_none_make_none(tmp_path: Path) -> None:
    assert serve_cli.start_message(parse("a.wav")) is None  # nothing sent: the protocol as before
    words = tmp_path / "words.txt"
    words.write_text("# contacts\nzelinski\n\n  priya nakamura \n", encoding="utf-8")
    start = serve_cli.start_message(parse("a.wav", "--hotword", "seven", "--hotwords-file", str(words),
                                          "--hotword-weight", "5", "--alternatives", "3", "--partial-interval-ms",
                                          "200", "--silence-after-speech-s", "1.0", "--sample-rate", "8000"))
    assert start == {"sample_rate": 8000, "hotwords": ["seven", "zelinski", "priya nakamura"], "hotword_weight": 5.0,
                     "alternatives": 3, "partial_interval_ms": 200.0,
                     "endpointing": {"silence_after_speech_s": 1.0}}
    # What the CLI sends is what the server parses (the same names and shapes).
    opts = from_start({"type": "start", **start}, StreamOptions())
    assert opts.alternatives == 3 and opts.endpoint is not None and opts.endpoint.silence_after_speech_s == 1.0
    assert serve_cli.start_message(parse("a.wav", "--endpoint")) == {"endpointing": True}


def test_segment_finals_with_times_and_alternatives(server: str, three_digits: Path) -> None:  # noqa: F811
    url = f"ws://{server}/v1/stream"
    r = run_cli("stream", str(three_digits), "--url", url, "--realtime", "0", "--endpoint", "--silence-after-speech-s",
                "1.0", "--alternatives", "3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    segments = [SEGMENT_LINE.match(x) for x in lines]
    finals = [m for m in segments if m]
    assert len(finals) == 3, r.stdout  # one line per spoken segment, in order, each with its times
    starts, ends = [float(m[1]) for m in finals], [float(m[2]) for m in finals]
    assert all(a < b for a, b in zip(starts, ends, strict=True))
    assert all(e <= s for e, s in zip(ends, starts[1:], strict=False))
    # Each final is followed by its alternatives (at most 3, best first, the first one its own text).
    for k, line in enumerate(lines):
        m = SEGMENT_LINE.match(line)
        if not m:
            continue
        alts = []
        for nxt in lines[k + 1:]:
            a = ALT_LINE.match(nxt)
            if not a:
                break
            alts.append((float(a[1]), a[2]))
        assert 1 <= len(alts) <= 3 and alts[0][1] == m[3]
        assert [c for c, _ in alts] == sorted((c for c, _ in alts), reverse=True)
    # No option: no start message, one final (no segments), its text only, as before.
    r = run_cli("stream", str(three_digits), "--url", url, "--realtime", "0", "--format", "json")
    assert r.returncode == 0, r.stderr
    (final,) = [json.loads(x) for x in r.stdout.splitlines()]
    assert final["type"] == "final" and "segment" not in final and "alternatives" not in final
    # The same as JSON lines: the server's segment finals themselves.
    r = run_cli("stream", str(three_digits), "--url", url, "--realtime", "0", "--endpoint", "--silence-after-speech-s",
                "1.0", "--format", "json", "--sample-rate", "8000")
    assert r.returncode == 0, r.stderr
    msgs = [json.loads(x) for x in r.stdout.splitlines()]
    assert [m["segment"] for m in msgs] == [0, 1, 2] and all(m["type"] == "final" for m in msgs)


def test_hotwords_reach_the_decoder_and_bad_options_get_one_error_line(server: str,  # noqa: F811
                                                                        three_digits: Path, tmp_path: Path) -> None:
    url = f"ws://{server}/v1/stream"
    # streaming-en's beam decoder has no LM weight: its flashlight decoder refuses hotwords, and that reason is what
    # comes back (the hotwords reached the decoder), as one line, no traceback.
    for args, needle in ((("--hotword", "seven", "--hotword-weight", "5"), "need an LM weight"),
                         (("--hotword", "seven", "--hotword-weight", "1000"), "hotword_weight must be in [0, 100]"),
                         (("--hotwords-file", str(tmp_path / "missing.txt")), "cannot read --hotwords-file")):
        r = run_cli("stream", str(three_digits), "--url", url, "--realtime", "0", *args)
        assert r.returncode == 1 and r.stdout == "", r.stdout
        errors = r.stderr.strip().splitlines()
        assert len(errors) == 1 and needle in errors[0] and "Traceback" not in r.stderr, r.stderr
