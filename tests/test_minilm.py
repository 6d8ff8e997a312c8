"""MiniLM: real weights, split at every cut, against sentence-transformers."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn import functional

from splitlab.errors import ConfigError
from splitlab.experiment import run_scenario
from splitlab.minilm import SentenceEncoder, encode, model_dir, staged_weights
from splitlab.models import MODELS, build_model
from splitlab.report import summarise
from splitlab.results import ResultStore
from splitlab.scenario import parse_scenario
from splitlab.sentences import load_sentences
from splitlab.verification import MIN_COSINE
from splitlab.weights import ensure_weights, load_trained

STAGES = (
    "embeddings", "layer1", "layer2", "layer3", "layer4", "layer5", "layer6",
    "pooling",
)  # fmt: skip


@functools.cache
def _model() -> SentenceEncoder:
    model = build_model("minilm")
    assert isinstance(model, SentenceEncoder)
    model.load_state_dict(staged_weights(), strict=True)
    return model.eval()


def _sentences(count: int) -> list[str]:
    texts = load_sentences().texts
    # Spread over the corpus: short, long, and from different descriptions.
    return [texts[i] for i in np.linspace(0, len(texts) - 1, count).astype(int)]


def test_the_registry_has_minilm_as_eight_stages() -> None:
    model = _model()
    assert model.stage_names == STAGES
    assert model.output_kind == "embedding"
    assert MODELS["minilm"].dataset == "sentences"
    parameters = sum(p.numel() for p in model.parameters())
    assert parameters == 22_565_376


def test_every_cut_gives_the_whole_models_embedding() -> None:
    model = _model()
    with torch.inference_mode():
        for text in _sentences(5):
            ids = torch.from_numpy(encode(text)[None])
            whole = model(ids)
            assert whole.shape == (1, 384)
            assert float(whole.norm()) == pytest.approx(1.0, abs=1e-6)
            for cut in range(model.num_stages + 1):
                head = model.run(ids, 0, cut)
                if 0 < cut < model.num_stages:
                    # One float tensor of the sentence's length crosses the cut.
                    assert head.shape == (1, ids.shape[1], 384)
                    assert head.dtype == torch.float32
                split = model.run(head, cut, model.num_stages)
                cos = float(functional.cosine_similarity(split, whole))
                assert cos > MIN_COSINE, (text, cut, cos)


def test_the_whole_model_matches_sentence_transformers() -> None:
    from sentence_transformers import SentenceTransformer

    texts = [*_sentences(8), "This is an example sentence"]
    reference = SentenceTransformer(str(model_dir()), device="cpu").encode(texts)
    model = _model()
    with torch.inference_mode():
        ours = torch.cat([model(torch.from_numpy(encode(t)[None])) for t in texts])
    cos = functional.cosine_similarity(ours, torch.from_numpy(reference))
    assert float(cos.min()) > 0.9999, cos


def test_tokens_are_the_packages_wordpiece_ids_without_padding() -> None:
    ids = encode("This is an example sentence")
    # [CLS] this is an example sentence [SEP], from the package's vocab.txt.
    vocab = (model_dir() / "vocab.txt").read_text().splitlines()
    assert [vocab[i] for i in ids] == [
        "[CLS]", "this", "is", "an", "example", "sentence", "[SEP]",
    ]  # fmt: skip
    assert ids.dtype == np.int64


def test_sentences_are_real_prose_from_scikit_learn() -> None:
    data = load_sentences()
    assert len(data) >= 50
    assert len(data.classes) >= 10 and "iris" in data.classes
    assert all(text.endswith(".") and len(text.split()) >= 6 for text in data.texts)
    assert "``" not in " ".join(data.texts) and ":ref:" not in " ".join(data.texts)
    first = data.sample(0)
    assert first.shape == (1, len(data.tokens[0])) and first.dtype == np.int64
    assert data.labels.max() == len(data.classes) - 1


def test_published_weights_are_cached_not_trained(tmp_path: Path) -> None:
    weights = ensure_weights(
        "minilm",
        dataset="sentences",
        data_dir=None,
        epochs=2,
        test_fraction=0.2,
        seed=1,
        root=tmp_path,
    )
    assert weights.test_accuracy is None and weights.train_s == 0.0
    assert weights.path.parent == tmp_path / "weights"
    model = load_trained("minilm", weights.path, classes=0)
    ids = torch.from_numpy(encode("The iris data set has three classes.")[None])
    with torch.inference_mode():
        assert torch.equal(model(ids), _model()(ids))


def _scenario_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "text",
        "seed": 3,
        "model": "minilm",
        "data": {"dataset": "sentences"},
        "workload": {"tasks_per_device": 4, "period_ms": 150},
        "profiling": {"warmup": 1, "repeats": 3},
        "devices": [
            {"name": "t1", "cpu_share": 0.5,
             "link": {"latency_ms": 2, "rate_mbps": 100}},
            {"name": "t2", "cpu_share": 0.5,
             "link": {"latency_ms": 10, "rate_mbps": 20}},
        ],
    }  # fmt: skip
    data.update(changes)
    return data


def test_minilm_takes_only_sentences_and_sentences_only_text_models() -> None:
    with pytest.raises(ConfigError, match="takes data set 'sentences'"):
        parse_scenario(_scenario_data(data={"dataset": "mnist"}), source="s.yaml")
    with pytest.raises(ConfigError, match="takes images"):
        parse_scenario(_scenario_data(model="alexnet-small"), source="s.yaml")


@pytest.mark.slow
def test_a_run_of_minilm_on_sentences_verifies_every_task(tmp_path: Path) -> None:
    algorithm = tmp_path / "cuts.py"
    algorithm.write_text(
        "def middle(problem):\n    return {'t1': 3, 't2': 0}\n", encoding="utf-8"
    )
    scenario = parse_scenario(
        _scenario_data(algorithm=f"{algorithm}:middle"), source="test"
    )
    events: list[dict[str, Any]] = []
    outcome = run_scenario(scenario, workspace=tmp_path, on_event=events.append)
    assert outcome.status == "completed", outcome.reason

    with ResultStore(outcome.store) as store:
        tasks = store.tasks(outcome.run_id)
        summary = summarise(store, outcome.run_id)
        profiles = store.profiles(outcome.run_id)
    sentences = load_sentences()
    assert len(tasks) == 8 and all(task.matches_unsplit for task in tasks)
    assert {task.device: task.cut for task in tasks} == {"t1": 3, "t2": 0}
    for task in tasks:
        embedding = np.frombuffer(task.logits, dtype=np.float32)
        assert embedding.shape == (384,)
        tokens = len(sentences.tokens[task.sample])
        # What crossed: int64 token ids at k=0, (1, tokens, 384) floats at k=3.
        expected = tokens * 8 if task.cut == 0 else tokens * 384 * 4
        assert task.cut_bytes == expected
    assert summary.accuracy is None
    assert summary.min_cosine is not None and summary.min_cosine > MIN_COSINE
    verified = [e for e in events if e["event"] == "verified"]
    assert verified and verified[0]["matched"] == 8
    assert [s.name for s in profiles["t1"].stages] == list(STAGES)
