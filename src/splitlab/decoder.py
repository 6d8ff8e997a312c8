"""A small GPT-style decoder and split text generation over the wire.

``gpt-tiny`` is a character-level decoder: token and position embeddings,
:data:`BLOCKS` pre-LN blocks (causal self-attention with a KV cache, then a
GELU MLP), a final layer norm and a linear LM head.  splitlab trains it for
itself, seeded, on the prose of scikit-learn's data set descriptions (the
text :mod:`splitlab.sentences` reads), and caches the weights with the
vocabulary as safetensors (:func:`ensure_decoder`).

Split generation at cut ``k`` (:func:`generate_split`): the device embeds
each token and runs blocks ``1..k``, keeping those blocks' KV caches; it
sends the newest token's hidden state over an authenticated
:class:`~splitlab.wire.Channel`; the base station runs blocks ``k+1..N``
with their own KV caches, the final norm and the head, and answers with the
next token (greedy).  The prompt crosses once as ``(1, P, width)``; every
later step sends one ``(1, 1, width)`` float32 vector whose frame has the
same size at every position, since no cache ever crosses the cut.  Both
ends run in one process here, the station on its own thread, talking TCP
over loopback; links are not shaped.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from splitlab.errors import ConfigError, ProtocolError
from splitlab.models import StagedModel
from splitlab.wire import (
    Channel,
    MessageKind,
    decode_tensor,
    tensor_header,
    tensor_payload,
)

logger = logging.getLogger(__name__)

WIDTH = 64
HEADS = 4
BLOCKS = 4
CONTEXT = 256
"""The most positions (prompt plus generated tokens) the model has."""

TRAIN_STEPS = 1000
TRAIN_BATCH = 16
TRAIN_LENGTH = 64
LEARNING_RATE = 4e-3
EXAMPLE_PROMPT = "The dataset contains "
"""The prompt :meth:`Decoder.example_input` encodes."""

HANDSHAKE_TIMEOUT_S = 10.0
STEP_TIMEOUT_S = 60.0


class KVCache:
    """One attention block's keys and values of every position seen so far."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """Positions held."""
        return 0 if self.keys is None else int(self.keys.shape[2])

    def extend(
        self, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new positions' keys and values; return all of them."""
        if self.keys is None or self.values is None:
            self.keys, self.values = keys, values
        else:
            self.keys = torch.cat([self.keys, keys], dim=2)
            self.values = torch.cat([self.values, values], dim=2)
        return self.keys, self.values


class Block(nn.Module):
    """A pre-LN transformer block: causal self-attention, then an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(WIDTH)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.projection = nn.Linear(WIDTH, WIDTH)
        self.mlp_norm = nn.LayerNorm(WIDTH)
        self.expand = nn.Linear(WIDTH, 4 * WIDTH)
        self.contract = nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Run the block on new positions, after those ``cache`` holds."""
        batch, tokens, _ = x.shape
        past = 0 if cache is None else cache.length
        split = self.qkv(self.attention_norm(x)).split(WIDTH, dim=2)
        query, key, value = (
            part.view(batch, tokens, HEADS, WIDTH // HEADS).transpose(1, 2)
            for part in split
        )
        if cache is not None:
            key, value = cache.extend(key, value)
        # New position i sees every cached position and new ones up to i.
        mask = torch.ones(tokens, past + tokens, dtype=torch.bool).tril(past)
        attended = functional.scaled_dot_product_attention(
            query, key, value, attn_mask=mask
        )
        x = x + self.projection(attended.transpose(1, 2).reshape(batch, tokens, WIDTH))
        out: torch.Tensor = x + self.contract(
            functional.gelu(self.expand(self.mlp_norm(x)))
        )
        return out


class _Embed(nn.Module):
    """Token plus position embeddings of ids ``(1, tokens)`` from ``start``."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.token = nn.Embedding(vocab, WIDTH)
        self.position = nn.Embedding(CONTEXT, WIDTH)

    def forward(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        positions = torch.arange(start, start + ids.shape[1])
        out: torch.Tensor = self.token(ids) + self.position(positions)
        return out


class _Head(nn.Module):
    """Final layer norm and the LM head: logits over the vocabulary."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH)
        self.logits = nn.Linear(WIDTH, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.logits(self.norm(x))
        return out


class Decoder(StagedModel):
    """gpt-tiny as stages: ``embedding``, ``block1`` .. ``blockN``, ``head``.

    As a staged model it runs a whole sequence without caches (for
    profiling and training); :class:`DeviceHalf` and :class:`StationHalf`
    run the same modules token by token with KV caches.
    """

    output_kind = "logits"

    def __init__(self, vocabulary: str) -> None:
        self.vocabulary = vocabulary
        stages: list[tuple[str, nn.Module]] = [("embedding", _Embed(len(vocabulary)))]
        stages += [(f"block{index}", Block()) for index in range(1, BLOCKS + 1)]
        stages.append(("head", _Head(len(vocabulary))))
        super().__init__("gpt-tiny", stages, input_shape=(CONTEXT,))

    def encode(self, text: str) -> torch.Tensor:
        """``text`` as token ids ``(1, len(text))``.

        Raises
        ------
        ConfigError
            If a character is not in the vocabulary.
        """
        index = {char: i for i, char in enumerate(self.vocabulary)}
        unknown = sorted({char for char in text if char not in index})
        if unknown:
            raise ConfigError(
                f"prompt has characters {''.join(unknown)!r} that gpt-tiny "
                "never saw in training"
            )
        return torch.tensor([[index[char] for char in text]], dtype=torch.int64)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of token ids."""
        return "".join(self.vocabulary[i] for i in ids)

    def example_input(self) -> torch.Tensor:
        """:data:`EXAMPLE_PROMPT` as token ids."""
        return self.encode(EXAMPLE_PROMPT)


def build_decoder(vocabulary: str) -> Decoder:
    """gpt-tiny with fresh weights over ``vocabulary`` (one character a token)."""
    if len(set(vocabulary)) != len(vocabulary) or not vocabulary:
        raise ConfigError(f"vocabulary of {len(vocabulary)} characters repeats some")
    return Decoder(vocabulary)


def training_text() -> str:
    """The prose gpt-tiny learns from: scikit-learn's data set descriptions."""
    from splitlab.sentences import corpus_text

    return corpus_text()


def train_decoder(model: Decoder, text: str, *, steps: int, seed: int) -> float:
    """Train ``model`` in place on ``text`` by next-character prediction.

    Returns the mean loss of the last 50 steps, in nats per character.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = model.encode(text)[0]
    optimiser = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    losses = []
    model.train()
    for _ in range(steps):
        starts = rng.integers(0, len(data) - TRAIN_LENGTH - 1, TRAIN_BATCH)
        batch = torch.stack([data[s : s + TRAIN_LENGTH + 1] for s in starts])
        logits = model(batch[:, :-1])
        loss = functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
        )
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    tail = losses[-50:]
    return sum(tail) / len(tail)


@dataclass(frozen=True, slots=True)
class DecoderWeights:
    """A trained gpt-tiny in the cache.

    Attributes
    ----------
    path:
        The safetensors file (the vocabulary is in its metadata).
    loss:
        Training loss at the end, in nats per character.
    trained_now:
        True if this call trained it.
    train_s:
        Time spent training, in seconds (zero from the cache).
    """

    path: Path
    loss: float
    trained_now: bool
    train_s: float


def ensure_decoder(
    *, seed: int = 1, steps: int = TRAIN_STEPS, root: Path | None = None
) -> DecoderWeights:
    """Cached gpt-tiny weights, training them first if absent."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save_file

    from splitlab.weights import cache_dir

    name = f"gpt-tiny-descr-n{steps}-s{seed}.safetensors"
    path = (root or cache_dir()) / "weights" / name
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            return DecoderWeights(path, float(metadata["loss"]), False, 0.0)
        except (OSError, KeyError, ValueError, SafetensorError) as error:
            logger.warning("cached decoder %s is unreadable (%s); training anew",
                           path, error)  # fmt: skip

    text = training_text()
    torch.manual_seed(seed)
    model = build_decoder("".join(sorted(set(text))))
    started_s = time.perf_counter()
    loss = train_decoder(model, text, steps=steps, seed=seed)
    train_s = time.perf_counter() - started_s
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    metadata = {
        "model": "gpt-tiny",
        "vocabulary": model.vocabulary,
        "loss": f"{loss:.6f}",
        "steps": str(steps),
        "seed": str(seed),
        "characters": str(len(text)),
    }
    save_file(state, str(partial), metadata=metadata)
    partial.replace(path)
    logger.info("trained gpt-tiny in %.1f s, loss %.3f", train_s, loss)
    return DecoderWeights(path, loss, True, train_s)


def load_decoder(path: Path) -> Decoder:
    """gpt-tiny with the weights and vocabulary of a cached file."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            vocabulary = (handle.metadata() or {})["vocabulary"]
        state = load_file(str(path))
    except (OSError, KeyError, SafetensorError) as error:
        raise ConfigError(f"cannot read decoder weights {path}: {error}") from None
    model = build_decoder(vocabulary)
    model.load_state_dict(state, strict=True)
    return model.eval()


def check_block_cut(cut: int) -> None:
    """Raise :class:`ConfigError` unless ``0 <= cut <= BLOCKS``.

    A generation cut counts blocks: the device always embeds its tokens and
    the station always applies the head.
    """
    if not 0 <= cut <= BLOCKS:
        raise ConfigError(f"generation cut {cut} is outside 0..{BLOCKS} blocks")


class DeviceHalf:
    """The device's part at cut ``k``: the embedding and blocks ``1..k``.

    Holds the KV caches of its own blocks only.
    """

    def __init__(self, model: Decoder, cut: int) -> None:
        check_block_cut(cut)
        self.model = model
        self.blocks = [model.stages[index] for index in range(1, cut + 1)]
        self.caches = [KVCache() for _ in self.blocks]
        self.position = 0

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(1, tokens, width)`` of new tokens after block ``k``."""
        if self.position + ids.shape[1] > CONTEXT:
            raise ConfigError(
                f"gpt-tiny has {CONTEXT} positions; {self.position} are used "
                f"and {ids.shape[1]} more were asked for"
            )
        x: torch.Tensor = self.model.stages[0](ids, self.position)
        for block, cache in zip(self.blocks, self.caches, strict=True):
            x = block(x, cache)
        self.position += ids.shape[1]
        return x


class StationHalf:
    """The base station's part at cut ``k``: blocks ``k+1..N`` and the head.

    Holds the KV caches of its own blocks only.
    """

    def __init__(self, model: Decoder, cut: int) -> None:
        check_block_cut(cut)
        self.model = model
        self.blocks = [model.stages[index] for index in range(cut + 1, BLOCKS + 1)]
        self.caches = [KVCache() for _ in self.blocks]

    def step(self, hidden: torch.Tensor) -> int:
        """The next token (greedy) after the newest of ``hidden``'s positions."""
        x = hidden
        for block, cache in zip(self.blocks, self.caches, strict=True):
            x = block(x, cache)
        logits = self.model.stages[BLOCKS + 1](x[:, -1:])
        return int(logits.argmax(dim=-1))


def generate_whole(model: Decoder, prompt: str, tokens: int) -> list[int]:
    """Greedy generation by the whole model in one place, with KV caches."""
    device, station = DeviceHalf(model, BLOCKS), StationHalf(model, BLOCKS)
    produced: list[int] = []
    ids = model.encode(prompt)
    with torch.inference_mode():
        for _ in range(tokens):
            produced.append(station.step(device.step(ids)))
            ids = torch.tensor([[produced[-1]]])
    return produced


@dataclass(frozen=True, slots=True)
class TokenTiming:
    """One generated token of a split generation.

    Attributes
    ----------
    token:
        The token's id.
    device_s:
        The device's embedding and blocks ``1..k``, in seconds.
    transmission_s:
        Round trip on the link minus the station's compute, in seconds.
    bs_s:
        The station's blocks ``k+1..N`` and head, in seconds.
    sent_bytes:
        Bytes of the frame the device sent for this token.
    positions:
        Positions the frame carried (the prompt's length first, then 1).
    """

    token: int
    device_s: float
    transmission_s: float
    bs_s: float
    sent_bytes: int
    positions: int


@dataclass(frozen=True, slots=True)
class Generation:
    """A split generation's text and per-token figures."""

    cut: int
    prompt: str
    text: str
    tokens: tuple[TokenTiming, ...]


def _serve(
    listener: socket.socket, model: Decoder, secret: bytes, failures: list[str]
) -> None:
    """The station's side of one generation session."""
    try:
        sock, _ = listener.accept()
        with Channel.accept(sock, secret=secret, timeout_s=HANDSHAKE_TIMEOUT_S) as ch:
            plan = ch.recv(timeout_s=STEP_TIMEOUT_S)
            if plan.kind != MessageKind.PLAN:
                raise ProtocolError(f"expected PLAN, got {plan.kind.name}")
            half = StationHalf(model, int(plan.header["cut"]))
            while True:
                message = ch.recv(timeout_s=STEP_TIMEOUT_S)
                if message.kind == MessageKind.DONE:
                    ch.send(MessageKind.BYE, {})
                    return
                if message.kind != MessageKind.TENSOR:
                    raise ProtocolError(f"expected TENSOR, got {message.kind.name}")
                array = decode_tensor(message.header["tensor"], message.payload)
                if array.ndim != 3 or array.shape[2] != WIDTH:
                    raise ProtocolError(f"hidden state of shape {array.shape}")
                started = time.perf_counter()
                with torch.inference_mode():
                    token = half.step(torch.from_numpy(array))
                bs_s = time.perf_counter() - started
                ch.send(MessageKind.RESULT, {"token": token, "bs_s": bs_s})
    except (ProtocolError, OSError, TimeoutError, KeyError, ValueError) as error:
        failures.append(f"{type(error).__name__}: {error}")
    finally:
        listener.close()


def generate_split(
    model: Decoder, prompt: str, *, cut: int, tokens: int, secret: bytes
) -> Generation:
    """Generate ``tokens`` tokens with blocks ``1..cut`` here and the rest at a BS.

    The station runs on a thread of this process behind a TCP listener on
    loopback; the device side connects to it through an authenticated
    :class:`~splitlab.wire.Channel`, as a device agent does.

    Raises
    ------
    ConfigError
        If the cut is outside ``0..N`` blocks, the prompt has an unknown
        character, or the context would overflow.
    ProtocolError
        If the station fails.
    """
    check_block_cut(cut)
    ids = model.encode(prompt)
    if ids.shape[1] == 0 or ids.shape[1] + tokens > CONTEXT:
        raise ConfigError(
            f"prompt of {ids.shape[1]} characters and {tokens} tokens must fit "
            f"in 1..{CONTEXT} positions"
        )
    listener = socket.create_server(("127.0.0.1", 0))
    failures: list[str] = []
    station = threading.Thread(
        target=_serve,
        args=(listener, model, secret, failures),
        name="decoder-bs",
        daemon=True,
    )
    station.start()
    device = DeviceHalf(model, cut)
    timings: list[TokenTiming] = []
    try:
        with Channel.connect(
            "127.0.0.1",
            listener.getsockname()[1],
            secret=secret,
            node="device",
            timeout_s=HANDSHAKE_TIMEOUT_S,
        ) as channel:
            channel.send(MessageKind.PLAN, {"cut": cut})
            for _ in range(tokens):
                started = time.perf_counter()
                with torch.inference_mode():
                    hidden = device.step(ids).contiguous().numpy()
                device_s = time.perf_counter() - started
                sent_at = time.perf_counter()
                sent = channel.send(
                    MessageKind.TENSOR,
                    {"tensor": tensor_header(hidden)},
                    tensor_payload(hidden),
                )
                reply = channel.recv(timeout_s=STEP_TIMEOUT_S)
                round_trip_s = time.perf_counter() - sent_at
                if reply.kind != MessageKind.RESULT:
                    raise ProtocolError(f"station answered {reply.kind.name}")
                token, bs_s = int(reply.header["token"]), float(reply.header["bs_s"])
                timings.append(
                    TokenTiming(
                        token=token,
                        device_s=device_s,
                        transmission_s=max(round_trip_s - bs_s, 0.0),
                        bs_s=bs_s,
                        sent_bytes=sent,
                        positions=hidden.shape[1],
                    )
                )
                ids = torch.tensor([[token]])
            channel.send(MessageKind.DONE, {})
            channel.recv(timeout_s=STEP_TIMEOUT_S)
    except ProtocolError as error:
        # A station that fails closes the connection; its reason is the cause.
        station.join(timeout=STEP_TIMEOUT_S)
        if failures:
            raise ProtocolError(f"the decoder station failed: {failures[0]}") from error
        raise
    finally:
        # A device that never connected leaves the station in accept().
        listener.close()
        station.join(timeout=STEP_TIMEOUT_S)
    if failures:
        raise ProtocolError(f"the decoder station failed: {failures[0]}")
    produced = [timing.token for timing in timings]
    return Generation(cut, prompt, model.decode(produced), tuple(timings))
