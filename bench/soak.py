"""B12: soak. 32 real-time streams for 10 minutes with abusive clients mixed in, against a quiet run of the same.

One `deepspeech serve` of the streaming model on loopback (default limits, worker 1 torch thread). Good clients: N
WebSocket streams, each sending its own ~8 s recording of test-speaker digits (0.3 s pauses) in 100 ms frames at
real-time pace, again and again; each final must equal the offline transcription of the same audio
(`transcribe_files`, same model). First a quiet run (good clients only, ``--quiet-minutes``), then the abusive run
(the same good clients for ``--minutes``, with a second process of abusive clients):

- slow senders: streams of empty or 2-byte frames (closed by the minimum audio rate), reconnecting;
- trickled uploads: a body at one byte per half second (408 after ``body_timeout_s``);
- decompression bombs: 99 kB of FLAC declaring 30 s of 8 channels at 384 kHz (400);
- garbage: streams of odd-length frames and text that is not ``{"type": "end"}`` (1007 / 1003), garbage uploads;
- abrupt disconnects: streams that vanish without a close handshake mid-audio;
- half-open connections: request heads sent in part and never finished (408 after ``header_timeout_s``).

Reported: the good clients' finals (correct / all), errors they saw (refusals, error messages, close codes other
than 1000, exceptions), partial-latency percentiles per run and the p98 ratio abusive / quiet (target <= 1.5),
the server's resident memory at the end against after the quiet run, its warm-up (target within 10%), and the
active-stream gauge after the clients stop (target 0). The abusive clients' outcomes are counted too. Partial
latency: from sending the frame that completed a partial's audio to receiving that partial (as in B4).

    .venv/bin/python bench/soak.py [--minutes 10] [--quiet-minutes 2] [--streams 32]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import logging
import multiprocessing as mp
import random
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf
import websockets

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serving import stream_audio  # noqa: E402
from serving.client import stream_pcm  # noqa: E402
from tests.serving_util import memory_kb, running_server  # noqa: E402

log = logging.getLogger("bench.soak")
CLIP_S = 8.0
SERVER_ARGS = ["--threads", "1"]  # every other limit at its default, as deployed
TARGETS = {"p98_ratio": 1.5, "rss_growth": 0.10}


# ------------------------------------------------------------------------------------------------ good clients

async def good_clients(host: str, clips: list[tuple[bytes, str]], n: int, seconds: float) -> dict[str, Any]:
    """``n`` clients streaming their clip at real time, one stream after another, for ``seconds``."""
    url = f"ws://{host}/v1/stream"
    end = time.monotonic() + seconds
    latencies: list[float] = []
    counts: collections.Counter[str] = collections.Counter()
    errors: list[str] = []

    async def client(k: int) -> None:
        pcm, expected = clips[k % len(clips)]
        await asyncio.sleep(0.1 * k / n)  # starts staggered over one frame
        while time.monotonic() < end:
            try:
                r = await stream_pcm(pcm, url, chunk_ms=100, realtime=1.0, open_timeout=30)
            except Exception as e:  # refused, reset: an error a good client saw
                counts["errors"] += 1
                errors.append(f"{type(e).__name__}: {e}")
                await asyncio.sleep(0.5)
                continue
            counts["streams"] += 1
            latencies.extend(r.latencies_s)
            if r.error or r.final is None or r.close_code != 1000:
                counts["errors"] += 1
                errors.append(f"close {r.close_code}: {r.error or 'no final'}")
            elif r.final["text"] == expected:
                counts["correct"] += 1
            else:
                counts["wrong"] += 1
                errors.append(f"final {r.final['text']!r} != offline {expected!r}")

    await asyncio.gather(*(client(k) for k in range(n)))
    pct = (lambda q: float(np.percentile(latencies, q) * 1000)) if latencies else (lambda q: float("nan"))
    return {"streams": counts["streams"], "correct": counts["correct"], "wrong": counts["wrong"],
            "errors": counts["errors"], "error_samples": errors[:10], "partials": len(latencies),
            "p50_ms": pct(50), "p98_ms": pct(98), "p99_ms": pct(99),
            "max_ms": float(max(latencies) * 1000) if latencies else float("nan")}


# ------------------------------------------------------------------------------------------------ abusive clients

def bomb() -> bytes:
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", samplerate=384_000, channels=8, format="FLAC", subtype="PCM_16") as f:
        zeros = np.zeros((384_000, 8), np.int16)
        for _ in range(30):
            f.write(zeros)
    return buf.getvalue()


async def abusers(host: str, seconds: float, seed: int = 0) -> dict[str, int]:
    """Run every kind of abusive client until ``seconds`` have passed; count what the server answered each."""
    ip, port = host.split(":")
    url = f"ws://{host}/v1/stream"
    end = time.monotonic() + seconds
    rng = random.Random(seed)
    seen: collections.Counter[str] = collections.Counter()
    flac_bomb = bomb()

    async def ws_outcome(kind: str, frames: list[bytes | str], pause: float, abort_after: float | None = None
                         ) -> None:
        """Send ``frames`` (reading the server's messages meanwhile), then wait for the server to close."""
        try:
            async with websockets.connect(url, ping_interval=None, open_timeout=30) as ws:

                async def drain() -> None:
                    try:
                        async for _ in ws:
                            pass
                    except websockets.ConnectionClosed:
                        pass

                reader = asyncio.create_task(drain())
                t0 = time.monotonic()
                try:
                    for f in frames:
                        await ws.send(f)
                        await asyncio.sleep(pause)
                        if abort_after is not None and time.monotonic() - t0 > abort_after:
                            ws.transport.abort()
                            seen[f"{kind} aborted"] += 1
                            return
                        if time.monotonic() > end:
                            break
                    async with asyncio.timeout(30):
                        await reader
                except (websockets.ConnectionClosed, TimeoutError):
                    pass
                finally:
                    reader.cancel()
            seen[f"{kind} {ws.close_code}"] += 1
        except Exception as e:
            seen[f"{kind} {type(e).__name__}"] += 1

    async def slow_sender() -> None:
        while time.monotonic() < end:
            await ws_outcome("slow-sender", [b"" if rng.random() < 0.5 else b"\x01\x00"] * 10_000, 0.2)

    async def garbage() -> None:
        while time.monotonic() < end:
            frames: list[bytes | str] = [rng.randbytes(2 * rng.randrange(800)) for _ in range(rng.randrange(5))]
            frames.append(rng.choice([rng.randbytes(2 * rng.randrange(50) + 1), "hello", '{"type": "nope"}']))
            await ws_outcome("garbage-frames", frames, 0.05)
            await asyncio.sleep(0.5)

    async def vanisher(pcm: bytes) -> None:
        while time.monotonic() < end:
            frames = [pcm[i: i + 3200] for i in range(0, len(pcm), 3200)]
            await ws_outcome("vanishing-stream", frames, 0.1, abort_after=rng.uniform(0.3, 2.0))

    async def http(kind: str, head: bytes, body: bytes = b"", drip_s: float | None = None) -> None:
        try:
            reader, writer = await asyncio.open_connection(ip, int(port))
        except OSError as e:
            seen[f"{kind} {type(e).__name__}"] += 1
            await asyncio.sleep(1)
            return
        try:
            writer.write(head + body)
            await writer.drain()

            async def drip() -> None:
                while drip_s is not None:
                    await asyncio.sleep(drip_s)
                    writer.write(b"\0")
                    await writer.drain()

            dripping = asyncio.create_task(drip())
            try:
                async with asyncio.timeout(max(5.0, end - time.monotonic() + 60)):
                    answer = await reader.read(64)
            finally:
                dripping.cancel()
            seen[f"{kind} {answer[9:12].decode(errors='replace') or 'closed'}"] += 1
        except (OSError, TimeoutError) as e:
            seen[f"{kind} {type(e).__name__}"] += 1
        finally:
            writer.close()

    async def trickler() -> None:
        while time.monotonic() < end:
            await http("trickled-upload", b"POST /v1/transcribe HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
                       b"\r\n", drip_s=0.5)

    async def half_head() -> None:
        while time.monotonic() < end:
            await http("half-head", b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: ha")

    async def uploader() -> None:
        junk = [flac_bomb, rng.randbytes(4000), b"RIFF\0\0\0\0WAVEfmt " + rng.randbytes(100)]
        while time.monotonic() < end:
            body = rng.choice(junk)
            kind = "bomb-upload" if body is flac_bomb else "garbage-upload"
            await http(kind, f"POST /v1/transcribe HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                       "Connection: close\r\n\r\n".encode(), body)
            await asyncio.sleep(1.0)

    speech = stream_audio(1, 3.0, seed=seed + 1)[0]
    tasks = ([slow_sender() for _ in range(8)] + [garbage() for _ in range(4)] + [vanisher(speech) for _ in range(2)]
             + [trickler() for _ in range(4)] + [half_head() for _ in range(64)] + [uploader() for _ in range(2)])
    await asyncio.gather(*tasks)
    return dict(sorted(seen.items()))


def _abuse_process(host: str, seconds: float, out: mp.Queue) -> None:
    out.put(asyncio.run(abusers(host, seconds)))


# ------------------------------------------------------------------------------------------------ the soak

def active_streams(host: str) -> float:
    text = httpx.get(f"http://{host}/metrics", timeout=10).text
    return float(re.search(r"^deepspeech_active_streams (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


def soak(model: Path, minutes: float, quiet_minutes: float, streams: int, tmp: Path) -> dict[str, Any]:
    from deepspeech.checkpoint import load_model_dir
    from deepspeech.inference.transcribe import transcribe_files

    pcms = stream_audio(min(streams, 16), CLIP_S, seed=12)
    paths = []
    for k, pcm in enumerate(pcms):
        paths.append(tmp / f"clip{k}.wav")
        sf.write(str(paths[-1]), np.frombuffer(pcm, "<i2"), 16000, subtype="PCM_16")
    expected = [t.text for t in transcribe_files(load_model_dir(model), paths, progress=False)]
    clips = list(zip(pcms, expected, strict=True))
    log.info("offline transcriptions of %d clips of %.0f s done", len(clips), CLIP_S)

    with running_server(model, *SERVER_ARGS, log_path=tmp / "server.log") as (proc, host):
        asyncio.run(good_clients(host, clips[:1], 1, 1.0))  # one stream: every code path once
        rss_start = memory_kb(proc.pid, "VmRSS")
        log.info("quiet run: %d streams for %.1f min", streams, quiet_minutes)
        quiet = asyncio.run(good_clients(host, clips, streams, quiet_minutes * 60))
        rss_warm = memory_kb(proc.pid, "VmRSS")
        log.info("quiet: p98 %.0f ms, %d/%d correct; abusive run for %.1f min", quiet["p98_ms"], quiet["correct"],
                 quiet["streams"], minutes)
        results: mp.Queue = mp.get_context("spawn").Queue()
        bad = mp.get_context("spawn").Process(target=_abuse_process, args=(host, minutes * 60, results))
        bad.start()
        rss_series: list[tuple[float, float, float]] = []  # (s into the abusive run, VmRSS MB, RssAnon MB)
        stop = threading.Event()

        def sample() -> None:
            t_start = time.monotonic()
            while not stop.wait(0 if not rss_series else 10.0):
                rss_series.append((round(time.monotonic() - t_start, 1), memory_kb(proc.pid, "VmRSS") / 1024,
                                   memory_kb(proc.pid, "RssAnon") / 1024))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        time.sleep(2.0)  # the abusers are connected before the measured clients start
        abusive = asyncio.run(good_clients(host, clips, streams, minutes * 60))
        outcomes = results.get(timeout=600)
        bad.join(timeout=60)
        stop.set()
        sampler.join()
        t0 = time.monotonic()
        while (gauge := active_streams(host)) != 0 and time.monotonic() - t0 < 30:
            time.sleep(0.5)
        settle_s = time.monotonic() - t0
        rss_end = memory_kb(proc.pid, "VmRSS")
        alive = proc.poll() is None
    server_log = (tmp / "server.log").read_text()
    return {"minutes": minutes, "quiet_minutes": quiet_minutes, "streams": streams, "quiet": quiet,
            "abusive": abusive, "abusive_outcomes": outcomes, "p98_ratio": abusive["p98_ms"] / quiet["p98_ms"],
            "rss_mb": {"start": rss_start / 1024, "warm": rss_warm / 1024, "end": rss_end / 1024},
            "rss_mb_during_abuse": rss_series,
            "rss_growth": rss_end / rss_warm - 1, "active_streams_end": gauge, "settle_s": settle_s,
            "server_alive": alive, "server_errors": server_log.count(" ERROR "),
            "server_tracebacks": server_log.count("Traceback")}


def soak_rows(minutes: float, quiet_minutes: float | None = None, streams: int = 32,
              model: Path = REPO / "models" / "streaming-en") -> tuple[list[dict], dict[str, Any]]:
    """B12 rows for bench/run.py (and the full result)."""
    with tempfile.TemporaryDirectory() as t:
        r = soak(model, minutes, min(2.0, minutes) if quiet_minutes is None else quiet_minutes, streams, Path(t))
    good = r["abusive"]

    def row(what: str, value: float, unit: str) -> dict[str, Any]:  # one measurement: spread = the value
        return {"id": "B12", "what": what, "unit": unit, "median": value, "min": value, "max": value, "n": 1}

    rows = [row(f"soak {streams} streams {minutes:g} min: p98 abusive/quiet", r["p98_ratio"], "x"),
            row("soak: server RSS end / after quiet run - 1", r["rss_growth"], "fraction"),
            row(f"soak: good finals correct (of {good['streams']})", good["correct"], "streams"),
            row("soak: errors seen by good clients", good["errors"] + r["quiet"]["errors"], "count"),
            row("soak: active-stream gauge at the end", r["active_streams_end"], "streams")]
    return rows, r


def print_table(r: dict[str, Any]) -> None:
    print("\n| run | minutes | streams done | finals correct | wrong | errors | p50 ms | p98 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, mins in (("quiet", r["quiet_minutes"]), ("abusive", r["minutes"])):
        x = r[name]
        print(f"| {name} | {mins:g} | {x['streams']} | {x['correct']}/{x['streams']} | {x['wrong']} | {x['errors']} "
              f"| {x['p50_ms']:.0f} | {x['p98_ms']:.0f} | {x['p99_ms']:.0f} | {x['max_ms']:.0f} |")
    rss = r["rss_mb"]
    ok = lambda b: "ok" if b else "MISSED"  # noqa: E731
    print(f"\np98 ratio abusive/quiet {r['p98_ratio']:.2f} (target <= {TARGETS['p98_ratio']}: "
          f"{ok(r['p98_ratio'] <= TARGETS['p98_ratio'])}); server RSS {rss['start']:.0f} MB after one stream, "
          f"{rss['warm']:.0f} MB after the quiet run, {rss['end']:.0f} MB at the end ({r['rss_growth']:+.1%}, target "
          f"within {TARGETS['rss_growth']:.0%}: {ok(abs(r['rss_growth']) <= TARGETS['rss_growth'])}); active streams "
          f"at the end {r['active_streams_end']:g} (after {r['settle_s']:.1f} s); server alive {r['server_alive']}, "
          f"{r['server_errors']} ERROR lines, {r['server_tracebacks']} tracebacks")
    print("server memory during the abusive run (s: VmRSS / RssAnon MB): "
          + ", ".join(f"{t:.0f}: {mb:.0f} / {anon:.0f}" for t, mb, anon in r["rss_mb_during_abuse"]))
    print("abusive clients' outcomes: " + ", ".join(f"{k}: {v}" for k, v in r["abusive_outcomes"].items()))
    for name in ("quiet", "abusive"):
        for e in r[name]["error_samples"]:
            print(f"  {name} good-client error: {e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "models" / "streaming-en"))
    ap.add_argument("--minutes", type=float, default=10.0, help="the abusive run")
    ap.add_argument("--quiet-minutes", type=float, default=None, help="the reference run (default min(2, minutes))")
    ap.add_argument("--streams", type=int, default=32, help="good real-time streams")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "soak.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    _, r = soak_rows(args.minutes, args.quiet_minutes, args.streams, Path(args.model))
    print_table(r)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
