"""Export a trained model directory with a model card: the command that produced it, its config, and its
measured WER/CER on named evaluation sets."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from deepspeech.checkpoint import CONFIG, HANZI, STATS, TOKENIZER, WEIGHTS, load_model_dir
from deepspeech.config import to_dict
from deepspeech.data.manifest import read_manifest
from deepspeech.decoding.beam import DECODER_JSON, MODEL_LM_DIR, build_decoder
from deepspeech.decoding.hanzi import LEXICON, SETTINGS
from deepspeech.decoding.kenlm import LM_BINARY, LM_META, UNIGRAMS
from deepspeech.inference.evaluate import evaluate_manifest

SHIP_LIMIT_BYTES = 20_000_000  # shipped models over 20 MB are stored in half precision


def export_model(src: str | Path, dst: str | Path, command: str, evals: dict[str, str],
                 notes: str = "", progress: bool = True, half: bool | None = None) -> dict[str, dict[str, float | int]]:
    """Copy the inference files of ``src`` to ``dst``, evaluate on ``evals`` (name -> manifest), write
    ``metrics.json`` and a ``README.md`` model card. Returns the metrics.

    ``half``: store floating-point weights as float16 (they are computed in float32 after loading); None = only
    if the float32 weights exceed :data:`SHIP_LIMIT_BYTES`. The figures are measured on the stored weights."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG, TOKENIZER, STATS):
        shutil.copy2(src / name, dst / name)
    if half is None:
        half = (src / WEIGHTS).stat().st_size > SHIP_LIMIT_BYTES
    _copy_weights(src / WEIGHTS, dst / WEIGHTS, half)
    _copy_decoding_files(src, dst)
    am = load_model_dir(dst)
    decoder = build_decoder(dst, am.tokenizer) if (dst / MODEL_LM_DIR / LM_BINARY).is_file() else None
    metrics: dict[str, dict[str, Any]] = {}
    for name, manifest in evals.items():
        utts = read_manifest(manifest)
        counts, _ = evaluate_manifest(am, utts, progress=progress)
        metrics[name] = {**counts.summary(), "manifest": manifest}
        if decoder is not None:
            beam, _ = evaluate_manifest(am, utts, progress=progress, decoder=decoder)
            metrics[name]["beam"] = beam.summary()
    (dst / "metrics.json").write_text(json.dumps(metrics, indent=1))
    cfg = to_dict(am.config)
    if decoder is not None:
        rows = "\n".join(f"| {n} | `{m['manifest']}` | {m['n']} | {100 * m['wer']:.2f}% | {100 * m['cer']:.2f}% | "
                         f"{100 * m['beam']['wer']:.2f}% | {100 * m['beam']['cer']:.2f}% |" for n, m in metrics.items())
        header = ("| set | manifest | utterances | WER | CER | beam + LM WER | beam + LM CER |\n"
                  "|---|---|---|---|---|---|---|")
        lm_meta = json.loads((dst / MODEL_LM_DIR / "lm.json").read_text(encoding="utf-8"))
        lm_text = (f"\nBeam search: {decoder.cfg.backend}, beam {decoder.cfg.beam_width}, alpha {decoder.cfg.alpha}, "
                   f"beta {decoder.cfg.beta} (`decoder.json`), with the {lm_meta['order']}-gram {lm_meta['unit']} "
                   f"KenLM in `lm/` ({lm_meta['vocabulary']:,} units, {lm_meta['binary_bytes'] / 1e6:.1f} MB; "
                   f"from {'; '.join(lm_meta['sources'])}).\n")
    else:
        rows = "\n".join(f"| {n} | `{m['manifest']}` | {m['n']} | {100 * m['wer']:.2f}% | {100 * m['cer']:.2f}% |"
                         for n, m in metrics.items())
        header = "| set | manifest | utterances | WER | CER |\n|---|---|---|---|---|"
        lm_text = ""
    m = cfg["model"]
    arch = (f"{len(m['convs'])} conv + {m['rnn_layers']} {'bidirectional' if m['bidirectional'] else 'unidirectional'} "
            f"{m['rnn_type'].upper()} layers of {m['rnn_hidden']}")
    if am.hanzi is not None:
        meta = dst / HANZI / LM_META
        hz = json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else {}
        lm_text += (f"\nOutputs are numbered-pinyin letters; `hanzi/` turns them into characters "
                    f"(`deepspeech.decoding.hanzi`: pinyin lexicon and a {hz.get('order', '?')}-gram character KenLM, "
                    f"{hz.get('binary_bytes', 0) / 1e6:.1f} MB). WER and CER above are on those characters.\n")
    warps = cfg["features"].get("warp_search") or []
    if warps:
        lm_text += (f"\nEvery figure decodes each utterance under the most confident of the frequency warps "
                    f"{', '.join(f'{a:g}' for a in warps)} (`features.warp_search`, "
                    "`deepspeech/inference/warp_search.py`), as `eval` and `transcribe` do with this model.\n")
    precision = (" Weights are stored in float16 (to stay under 20 MB) and computed in float32; the figures below "
                 "are measured on the stored weights.") if half else ""
    card = f"""# {cfg['name']}

DS2 acoustic model: {am.model.num_parameters():,} parameters ({arch}), language `{cfg['data']['lang']}`,
{len(am.tokenizer)} output symbols. Exported {date.today().isoformat()}.{precision}

## How it was made

```bash
{command}
```

## Measured (greedy decoding{", and beam search with the LM" if decoder else ""})

{header}
{rows}
{lm_text}
Reproduce a row: `deepspeech eval --model {dst.as_posix()} --manifest MANIFEST --format json`
{"(add `--decoder beam` for the beam-search columns)." if decoder else ""}
{notes}{learning_curve(src.parent / "metrics.jsonl")}
## Config

```json
{json.dumps(cfg, indent=1)}
```
"""
    (dst / "README.md").write_text(card)
    return metrics


def learning_curve(metrics_jsonl: Path, max_rows: int = 16) -> str:
    """A model card's learning curve: dev WER and CER against the hours of training audio seen, from the epoch
    records of a run's ``metrics.jsonl`` (those with ``audio_h``, written by the trainer at each epoch's end). At most
    ``max_rows`` epochs, evenly spaced, the last always among them; "" when the run left no such records."""
    if not metrics_jsonl.is_file():
        return ""
    epochs = []
    for line in metrics_jsonl.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and "audio_h" in r and "dev_wer" in r:
            epochs.append(r)
    if not epochs:
        return ""
    stride = -(-len(epochs) // max_rows)
    shown = epochs[::-1][::stride][::-1]  # counted back from the last epoch, so the last is shown
    rows = "\n".join(f"| {r['epoch']} | {r['audio_h']:.1f} | {100 * r['dev_wer']:.2f}% | {100 * r['dev_cer']:.2f}% |"
                     for r in shown)
    return ("\n## Learning curve\n\nDev error at the end of each epoch against the hours of (augmented) training "
            "audio seen, from the run's `metrics.jsonl`; greedy decoding.\n\n"
            f"| epoch | audio seen (h) | dev WER | dev CER |\n|---|---|---|---|\n{rows}\n")


def _copy_weights(src: Path, dst: Path, half: bool) -> None:
    if half:
        tensors = load_file(str(src))
        save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, str(dst),
                  metadata=safe_open(str(src), "pt").metadata())
    else:
        shutil.copy2(src, dst)


def _copy_decoding_files(src: Path, dst: Path) -> None:
    """The model directory's LMs (binary, unigrams, metadata, pinyin lexicon; not the ARPA text) and tuned decoder
    settings: ``lm/`` for beam search, ``hanzi/`` for a pinyin model's characters."""
    for sub in (MODEL_LM_DIR, HANZI):
        if (src / sub / LM_BINARY).is_file() or (src / sub / LEXICON).is_file():
            (dst / sub).mkdir(exist_ok=True)
            for name in (LM_BINARY, UNIGRAMS, LM_META, LEXICON, SETTINGS):
                if (src / sub / name).is_file():
                    shutil.copy2(src / sub / name, dst / sub / name)
    if (src / DECODER_JSON).is_file():  # "lm" (the LM it was tuned with) becomes the copy shipped beside it: no
        tuned = json.loads((src / DECODER_JSON).read_text())  # path of the training machine goes into the model
        if "lm" in tuned and (dst / MODEL_LM_DIR).is_dir():
            tuned["lm"] = MODEL_LM_DIR
        (dst / DECODER_JSON).write_text(json.dumps(tuned, indent=1) + "\n")
