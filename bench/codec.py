"""What each cut-tensor codec costs and loses, at every cut, on real images.

For each model (trained weights from splitlab's cache, trained on first use
exactly as the default scenario trains them) and each held-out image, the
head runs to cut ``k``, the activation is encoded and decoded one sample at
a time (batch 1, as a device sends it), and the tail finishes the decoded
batch.  For each codec and cut it reports:

- bytes: mean encoded bytes per sample, and the ratio to fp32's;
- encode+decode time: the median per sample, in microseconds;
- agreement: the share of images whose top-1 class equals the float32
  model's;
- accuracy change: accuracy with the codec minus accuracy in float32 on the
  same images, in percentage points.

A lossless compressor changes no value, so the tail runs once per number
format; ``fp32`` is the baseline itself.

    .venv/bin/python bench/codec.py [--quick] [--samples N] [--data CIFAR_DIR]
        [--models alexnet resnet20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import load_average, print_table, write_results

from splitlab.codec import CODECS, decode, encode, parse_codec
from splitlab.data import Dataset, load_held_out
from splitlab.scenario import TrainingConfig
from splitlab.weights import ensure_weights, load_trained

SEED = 1


def _model_and_data(
    name: str, dataset: str, data_dir: str | None, samples: int
) -> tuple[Any, Dataset, float]:
    training = TrainingConfig()
    where = None if data_dir is None else Path(data_dir)
    weights = ensure_weights(
        name,
        dataset=dataset,
        data_dir=where,
        epochs=training.epochs,
        test_fraction=training.test_fraction,
        seed=SEED,
        progress=True,
    )
    data = load_held_out(
        dataset, data_dir=where, test_fraction=training.test_fraction, seed=SEED
    )
    model = load_trained(name, weights.path, classes=len(data.classes)).eval()
    chosen = replace(data, images=data.images[:samples], labels=data.labels[:samples])
    return model, chosen, weights.test_accuracy


def measure(model: Any, data: Dataset) -> list[dict[str, Any]]:
    """One row per (cut, codec) for ``model`` on ``data``."""
    images = torch.tensor(data.images)
    labels = np.asarray(data.labels)
    rows = []
    with torch.inference_mode():
        whole = model(images).argmax(dim=1).numpy()
        fp32_correct = float(np.mean(whole == labels))
        for cut in range(model.num_stages):
            head = model.run(images, 0, cut).contiguous().numpy()
            decoded: dict[str, np.ndarray] = {}
            for name in CODECS:
                sizes, times_s = [], []
                outputs = []
                for index in range(len(head)):
                    one = head[index : index + 1]
                    started_s = time.perf_counter()
                    header, payload = encode(one, name)
                    back = decode(header, payload)
                    times_s.append(time.perf_counter() - started_s)
                    sizes.append(len(payload))
                    outputs.append(back)
                number_format = parse_codec(name).number_format
                if number_format not in decoded:
                    decoded[number_format] = np.concatenate(outputs)
                rows.append(
                    {
                        "cut": cut,
                        "codec": name,
                        "format": number_format,
                        "bytes": statistics.fmean(sizes),
                        "codec_us": statistics.median(times_s) * 1e6,
                    }
                )
            predictions = {
                number_format: model.run(
                    torch.from_numpy(values), cut, model.num_stages
                )
                .argmax(dim=1)
                .numpy()
                for number_format, values in decoded.items()
            }
            fp32_bytes = next(
                row["bytes"]
                for row in rows
                if row["cut"] == cut and row["codec"] == "fp32"
            )
            for row in rows:
                if row["cut"] != cut:
                    continue
                predicted = predictions[row["format"]]
                row["ratio"] = row["bytes"] / fp32_bytes
                row["agreement"] = float(np.mean(predicted == whole))
                row["accuracy_change_pp"] = (
                    float(np.mean(predicted == labels)) - fp32_correct
                ) * 100
    return rows


def _summary(rows: list[dict[str, Any]]) -> list[list[object]]:
    table = []
    for name in CODECS:
        own = [row for row in rows if row["codec"] == name]
        table.append(
            [
                name,
                f"{statistics.fmean(r['ratio'] for r in own):.3f}",
                f"{min(r['ratio'] for r in own):.3f}",
                f"{max(r['ratio'] for r in own):.3f}",
                f"{statistics.median(r['codec_us'] for r in own):.0f}",
                f"{min(r['agreement'] for r in own):.3f}",
                f"{min(r['accuracy_change_pp'] for r in own):+.2f}",
                f"{max(r['accuracy_change_pp'] for r in own):+.2f}",
            ]
        )
    return table


def main() -> None:
    """Measure, print the tables, write ``bench/results/codec.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="100 samples")
    parser.add_argument("--data", default=None, help="a local CIFAR-10 folder")
    parser.add_argument("--models", nargs="+", default=["alexnet", "resnet20"])
    args = parser.parse_args()
    samples = 100 if args.quick else args.samples
    torch.set_num_threads(1)
    started_load = load_average()[0]

    sets = [("mnist", None)] + ([("cifar10", args.data)] if args.data else [])
    results: dict[str, Any] = {"samples": samples, "models": {}}
    for dataset, data_dir in sets:
        for name in args.models:
            model, data, accuracy = _model_and_data(name, dataset, data_dir, samples)
            rows = measure(model, data)
            key = f"{name}/{dataset}"
            results["models"][key] = {"test_accuracy": accuracy, "rows": rows}
            print(f"\n{key}: {len(data.labels)} held-out images, "
                  f"test accuracy {accuracy:.3f}; over the cuts k = 0.."
                  f"{model.num_stages - 1}:")  # fmt: skip
            print_table(
                ["codec", "bytes/fp32 mean", "min", "max", "enc+dec us",
                 "min agreement", "min acc. change pp", "max acc. change pp"],
                _summary(rows),
            )  # fmt: skip
            print("\nper cut (int8, int8+zstd):")
            print_table(
                ["k", "codec", "bytes", "bytes/fp32", "enc+dec us", "agreement",
                 "acc. change pp"],
                [
                    [row["cut"], row["codec"], f"{row['bytes']:.0f}",
                     f"{row['ratio']:.3f}", f"{row['codec_us']:.0f}",
                     f"{row['agreement']:.3f}", f"{row['accuracy_change_pp']:+.2f}"]
                    for row in rows
                    if row["codec"] in ("int8", "int8+zstd")
                ],
            )  # fmt: skip
    write_results("codec", results, started_load=started_load)


if __name__ == "__main__":
    main()
