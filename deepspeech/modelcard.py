"""Export a trained model directory with a model card: the command that produced it, its config, and its
measured WER/CER on named evaluation sets."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from deepspeech.checkpoint import CONFIG, STATS, TOKENIZER, WEIGHTS, load_model_dir
from deepspeech.config import to_dict
from deepspeech.data.manifest import read_manifest
from deepspeech.inference import evaluate_manifest

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
    if half:
        tensors = load_file(str(src / WEIGHTS))
        save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, str(dst / WEIGHTS),
                  metadata=safe_open(str(src / WEIGHTS), "pt").metadata())
    else:
        shutil.copy2(src / WEIGHTS, dst / WEIGHTS)
    am = load_model_dir(dst)
    metrics = {}
    for name, manifest in evals.items():
        counts, _ = evaluate_manifest(am, read_manifest(manifest), progress=progress)
        metrics[name] = {**counts.summary(), "manifest": manifest}
    (dst / "metrics.json").write_text(json.dumps(metrics, indent=1))
    cfg = to_dict(am.config)
    rows = "\n".join(f"| {n} | `{m['manifest']}` | {m['n']} | {100 * m['wer']:.2f}% | {100 * m['cer']:.2f}% |"
                     for n, m in metrics.items())
    m = cfg["model"]
    arch = (f"{len(m['convs'])} conv + {m['rnn_layers']} {'bidirectional' if m['bidirectional'] else 'unidirectional'} "
            f"{m['rnn_type'].upper()} layers of {m['rnn_hidden']}")
    precision = (" Weights are stored in float16 (to stay under 20 MB) and computed in float32; the figures below "
                 "are measured on the stored weights.") if half else ""
    card = f"""# {cfg['name']}

DS2 acoustic model: {am.model.num_parameters():,} parameters ({arch}), language `{cfg['data']['lang']}`,
{len(am.tokenizer)} output symbols. Exported {date.today().isoformat()}.{precision}

## How it was made

```bash
{command}
```

## Measured (greedy decoding)

| set | manifest | utterances | WER | CER |
|---|---|---|---|---|
{rows}

Reproduce a row: `deepspeech eval --model {dst.as_posix()} --manifest MANIFEST --format json`.
{notes}
## Config

```json
{json.dumps(cfg, indent=1)}
```
"""
    (dst / "README.md").write_text(card)
    return metrics
