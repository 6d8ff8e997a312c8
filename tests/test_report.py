"""Reports: the HTML tables hold the store's numbers and every figure is there;
comparisons group runs and compute confidence intervals worked out by hand."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

from splitlab.errors import ConfigError
from splitlab.profile import NodeProfile, StageProfile
from splitlab.report import (
    COMPARISON_FIGURES,
    RUN_FIGURES,
    SUMMARY_HEADERS,
    compare,
    compare_runs,
    comparison_html,
    confidence_interval,
    run_report_html,
    summarise,
    varying_fields,
)
from splitlab.results import (
    NodeRecord,
    PredictionRecord,
    ResultStore,
    SliceRecord,
    TaskRecord,
)
from splitlab.scenario import parse_scenario

SCENARIO = {
    "name": "known",
    "model": "alexnet-small",
    "scheduler": "rr",
    "devices": [
        {"name": "d1", "cpu_share": 0.5, "link": {"latency_ms": 2, "rate_mbps": 100}},
        {"name": "d2", "cpu_share": 0.25, "link": {"latency_ms": 20, "rate_mbps": 10}},
    ],
}
STAGES = ("conv1", "pool1", "fc")

# Per device: (device_s, transmission_s, bs_wait_s, bs_s) of its three tasks.
PARTS = {
    "d1": [(0.001, 0.004, 0.000, 0.002), (0.001, 0.004, 0.001, 0.002),
           (0.001, 0.004, 0.002, 0.002)],
    "d2": [(0.002, 0.030, 0.000, 0.003), (0.002, 0.030, 0.000, 0.003),
           (0.002, 0.050, 0.010, 0.003)],
}  # fmt: skip


def _record_run(
    store: ResultStore,
    *,
    algorithm: str = "greedy",
    seed: int = 1,
    latency_ms: float = 2,
    scale: float = 1.0,
    cuts: dict[str, int] | None = None,
) -> int:
    data = yaml.safe_load(yaml.safe_dump(SCENARIO))
    data["algorithm"], data["seed"] = algorithm, seed
    for device in data["devices"]:
        device["link"]["latency_ms"] = latency_ms
    scenario = parse_scenario(data, source="test")
    run_id = store.create_run(
        name="known", scenario_yaml=scenario.to_yaml(),
        scenario_hash=scenario.fingerprint(), seed=seed, algorithm=algorithm,
        scheduler="rr", environment={"torch": "2.13.0", "revision": "abc123"},
    )  # fmt: skip
    cuts = cuts or {"d1": 1, "d2": 0}
    store.record_node(run_id, NodeRecord("bs", "bs", 1, None, None, None))
    for device in scenario.devices:
        store.record_node(
            run_id,
            NodeRecord(device.name, "device", 2, device.share, 2**30, "cgroup-v1",
                       link={"latency_ms": latency_ms,
                             "rate_mbps": device.link.rate_mbps, "jitter_ms": 0.0}),
        )  # fmt: skip
    for node, factor in (("bs", 1.0), ("d1", 2.0), ("d2", 4.0)):
        stages = tuple(
            StageProfile(name, 1e-4 * (i + 1) * factor, 2e-4 * (i + 1) * factor,
                         4096 >> i, 100)
            for i, name in enumerate(STAGES)
        )  # fmt: skip
        store.record_profile(run_id, NodeProfile(node, "alexnet-small", 12288, stages))

    predictions = []
    task_id = 0
    for device, rows in PARTS.items():
        for idx, (dev, link, wait, bs) in enumerate(rows):
            total = (dev + link + wait + bs) * scale
            predictions.append(
                PredictionRecord(task_id, device, idx, cuts[device], 0.05 * idx,
                                 0.0, dev, link, 0.0, bs, total * 0.8)
            )  # fmt: skip
            store.record_task(
                run_id,
                TaskRecord(
                    task_id=task_id, device=device, idx=idx, sample=task_id,
                    label=1, cut=cuts[device], arrival_s=0.05 * idx,
                    device_wait_s=0.0, device_s=dev * scale,
                    transmission_s=link * scale, bs_wait_s=wait * scale,
                    bs_s=bs * scale, delay_s=total, cut_bytes=4096,
                    prediction=1 if task_id % 2 else 0, logits=b"\x00" * 12,
                    completed_at=1.0, matches_unsplit=True, max_abs_diff=0.0,
                ),
                [SliceRecord(task_id, device, 0, cuts[device], 3 - cuts[device],
                             0.05 * idx + 0.01, 0.05 * idx + 0.012)],
            )  # fmt: skip
            task_id += 1
    store.record_plan(run_id, cuts, predictions)
    store.finish_run(run_id, "completed", None)
    return run_id


class _Tables(HTMLParser):
    """Collects every table's cell texts by the table's id, and figure ids."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.figures: dict[str, bytes] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._figure: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "table":
            self._table = values["id"]
            self.tables[self._table or ""] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "figure":
            self._figure = values["id"]
        elif tag == "img" and self._figure:
            src = values["src"] or ""
            self.figures[self._figure] = base64.b64decode(src.split(",", 1)[1])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _parse(text: str) -> _Tables:
    parser = _Tables()
    parser.feed(text)
    return parser


def test_run_report_tables_hold_the_stores_numbers_and_every_figure(
    tmp_path: Path,
) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        run_id = _record_run(store)
        page = _parse(run_report_html(store, run_id))
        summary = summarise(store, run_id)

    rows = page.tables["summary"]
    assert tuple(rows[0]) == SUMMARY_HEADERS
    by_group = {row[0]: dict(zip(SUMMARY_HEADERS, row)) for row in rows[1:]}
    assert list(by_group) == ["d1", "d2", "all"]

    # Worked out by hand from PARTS (ms): d1 delays 7, 8, 9; d2 35, 35, 65.
    d1, d2, overall = by_group["d1"], by_group["d2"], by_group["all"]
    assert (d1["mean ms"], d1["p50 ms"], d1["p95 ms"]) == ("8.00", "8.00", "8.90")
    assert (d2["mean ms"], d2["p50 ms"], d2["p95 ms"]) == ("45.00", "35.00", "62.00")
    assert (d2["device ms"], d2["link ms"], d2["BS wait ms"], d2["BS ms"]) == (
        "2.00", "36.67", "3.33", "3.00",
    )  # fmt: skip
    assert (d1["k"], d2["k"], overall["k"]) == ("1", "0", "")
    assert (overall["tasks"], overall["expected"]) == ("6", "6")
    assert overall["mean ms"] == "26.50"  # (7+8+9+35+35+65) / 6
    assert overall["p95 ms"] == "57.50"  # numpy's linear percentile
    # Predictions are 0.8 of each measured delay: error 20 % everywhere.
    assert overall["predicted mean ms"] == "21.20"
    assert overall["prediction error"] == "20.0%"
    for row, record in zip(rows[1:], summary.rows):
        assert float(row[4]) == pytest.approx(record.mean_s * 1e3, abs=5e-3)

    cuts = {row[0]: row for row in page.tables["cuts"][1:]}
    assert cuts["d1"][1:4] == ["1", "conv1", "4096"]
    assert cuts["d2"][1:4] == ["0", "(input)", "12288"]
    facts = dict(page.tables["facts"][1:])
    assert facts["git revision"] == "abc123"
    assert facts["split output equals unsplit"] == "6 of 6 tasks"
    assert facts["accuracy on the tasks"] == "50.0%"

    assert sorted(page.figures) == sorted(f"fig-{name}" for name in RUN_FIGURES)
    for png in page.figures.values():
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert len(png) > 5_000  # drawn, not an empty canvas


def test_confidence_interval_by_hand() -> None:
    # mean 2, sample sd sqrt(2), n 2: half width 12.706 * sqrt(2) / sqrt(2).
    mean, low, high = confidence_interval([1.0, 3.0])
    assert (mean, low, high) == pytest.approx((2.0, 2.0 - 12.706, 2.0 + 12.706))
    # n 4, values 1..4: sd 1.29099, half width 3.182 * 1.29099 / 2 = 2.05397.
    assert confidence_interval([1.0, 2.0, 3.0, 4.0]) == pytest.approx(
        (2.5, 2.5 - 2.05397, 2.5 + 2.05397), abs=1e-5
    )
    assert confidence_interval([5.0]) == (5.0, 5.0, 5.0)


def test_varying_fields_name_every_device_at_once_when_they_agree() -> None:
    def scenario(latency_ms: float) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load(yaml.safe_dump(SCENARIO))
        for device in data["devices"]:
            device["link"]["latency_ms"] = latency_ms
        return data

    base, one, two = scenario(2), scenario(50), scenario(2)
    one["seed"] = 2
    two["devices"][1]["cpu_share"] = 1.0
    fields = varying_fields({1: base, 2: one, 3: two})
    assert fields[2] == {
        "devices[*].link.latency_ms": 50,
        "devices[d2].cpu_share": 0.25,
        "seed": 2,
    }
    assert fields[3]["devices[d2].cpu_share"] == 1.0
    assert "devices[d1].cpu_share" not in fields[1]
    assert "name" not in fields[1]
    # Rates differ between the devices but not between the runs: not a field.
    assert "devices[d1].link.rate_mbps" not in fields[1]
    # Latencies that differ between devices are named per device.
    one["devices"][0]["link"]["latency_ms"] = 7
    assert varying_fields({1: base, 2: one})[2] == {
        "devices[d1].link.latency_ms": 7,
        "devices[d2].link.latency_ms": 50,
        "seed": 2,
    }


def test_comparison_groups_lines_x_and_seeds(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        params = {}
        for algorithm, factor in (("greedy", 1.0), ("offload-all", 2.0)):
            for latency in (5, 50):
                for seed, noise in ((1, 1.0), (2, 1.5)):
                    run_id = _record_run(
                        store, algorithm=algorithm, seed=seed, latency_ms=latency,
                        scale=factor * noise * latency / 5,
                        cuts={"d1": 3, "d2": 3} if algorithm == "greedy" else None,
                    )  # fmt: skip
                    params[run_id] = {
                        "algorithm": algorithm,
                        "devices[*].link.latency_ms": latency,
                        "seed": seed,
                    }
        comparison = compare(store, params, title="sweep t")
        by_hand = compare_runs(store, sorted(params))
        with pytest.raises(ConfigError, match="--x 'rate' is not a compared field"):
            compare(store, params, title="t", x="rate")

    assert comparison.x_name == "devices[*].link.latency_ms"
    assert comparison.line_name == "algorithm"
    assert comparison.replicate_name == "seed"
    assert comparison.x_values == (5, 50)
    assert comparison.line_labels == ("greedy", "offload-all")
    # The same grouping comes from the scenarios alone.
    assert by_hand.x_name == comparison.x_name
    assert [p.run_ids for p in by_hand.points] == [p.run_ids for p in comparison.points]

    point = next(
        p for p in comparison.points
        if p.line == "offload-all" and p.x == 50 and p.metric == "mean"
    )  # fmt: skip
    # Base overall mean 26.5 ms scaled by 2 * 10 * (1 and 1.5): 530 and 795 ms.
    assert point.replicates == 2
    assert point.value_s == pytest.approx(0.6625)
    assert point.high_s - point.value_s == pytest.approx(
        12.706 * 0.265 / 2**0.5 / 2**0.5
    )
    cuts = {(c.line, c.device, c.rate_mbps): c.cut for c in comparison.cut_points}
    assert cuts[("greedy", "d2", 10.0)] == 3
    assert cuts[("offload-all", "d1", 100.0)] == 1

    page = _parse(comparison_html(comparison))
    assert sorted(page.figures) == sorted(f"fig-{n}" for n in COMPARISON_FIGURES)
    points = page.tables["points"]
    row = next(r for r in points if r[:3] == ["offload-all", "50", "mean"])
    assert row[3] == "662.50"
    assert re.fullmatch(r"\d+ \d+", row[7])
