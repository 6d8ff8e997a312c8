"""The ``sentences`` data set: real English sentences that ship with scikit-learn.

scikit-learn installs the descriptions of its bundled data sets as
reStructuredText files (``sklearn/datasets/descr/*.rst``: the iris, digits,
breast cancer, California housing, 20 newsgroups, ... data sets).  Their
prose paragraphs are real English written by people; :func:`corpus_text`
extracts those paragraphs (dropping titles, tables, lists, code and
directives, and reStructuredText markup), and :func:`load_sentences` splits
them into sentences of 6 to 40 words that end with a full stop.  A
sentence's label is the description it comes from.

The files are found without importing scikit-learn, and the same installed
version always yields the same sentences, in file order.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from splitlab.errors import ConfigError

MIN_WORDS = 6
MAX_WORDS = 40
# Share of letters and spaces below which a "sentence" is mostly numbers,
# formulas or references rather than prose.
MIN_LETTER_SHARE = 0.85

_BLOCK_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_ROLE = re.compile(r":\w+:`([^`<]*?)(\s*<[^>]*>)?`")
_LINK = re.compile(r"`([^`<]*?)\s*<[^>]*>`_+")
_CITATION = re.compile(r"\[\w+\]_")
# Lines that start a title underline, a list, a table, a field or a directive.
_NOT_PROSE = (" ", "\t", "..", ":", "=", "-", "*", "|", "+")


def descriptions_dir() -> Path:
    """scikit-learn's ``datasets/descr`` folder.

    Raises
    ------
    ConfigError
        If scikit-learn is not installed or the folder has no ``.rst`` files.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise ConfigError("data set 'sentences' needs scikit-learn, not installed")
    folder = Path(spec.origin).parent / "datasets" / "descr"
    if not any(folder.glob("*.rst")):
        raise ConfigError(f"data set 'sentences': no .rst files in {folder}")
    return folder


def _paragraphs(text: str) -> list[str]:
    """The prose paragraphs of a reStructuredText file, markup removed."""
    found = []
    for block in _BLOCK_BREAK.split(text):
        lines = block.strip("\n").split("\n")
        if any(line.startswith(_NOT_PROSE) for line in lines):
            continue
        paragraph = " ".join(line.strip() for line in lines)
        paragraph = _ROLE.sub(r"\1", paragraph)
        paragraph = _LINK.sub(r"\1", paragraph)
        paragraph = _CITATION.sub("", paragraph)
        paragraph = paragraph.replace("``", "").replace("`", "")
        if paragraph:
            found.append(paragraph)
    return found


def corpus_text(folder: Path | None = None) -> str:
    """Every prose paragraph of every description, one paragraph per line."""
    folder = folder or descriptions_dir()
    paragraphs = []
    for path in sorted(folder.glob("*.rst")):
        paragraphs += _paragraphs(path.read_text(encoding="utf-8"))
    return "\n".join(paragraphs) + "\n"


def _is_sentence(text: str) -> bool:
    words = text.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS or not text.endswith("."):
        return False
    if "http" in text or "_" in text:
        return False
    letters = sum(1 for char in text if char.isalpha() or char == " ")
    return letters / len(text) >= MIN_LETTER_SHARE


@dataclass(frozen=True, slots=True, eq=False)
class SentenceSet:
    """Sentences ready for a text model: the text and its token ids.

    Attributes
    ----------
    name:
        The data set's registry name (``sentences``).
    texts:
        The sentences.
    tokens:
        Each sentence's token ids (1-D int64, ``[CLS] ... [SEP]``).
    labels:
        int64 array: the index in ``classes`` of the description a sentence
        comes from.
    classes:
        The descriptions' names (``iris``, ``digits``...).
    source:
        Where the sentences came from.
    """

    name: str
    texts: tuple[str, ...]
    tokens: tuple[npt.NDArray[np.int64], ...]
    labels: npt.NDArray[np.int64]
    classes: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        """Number of sentences."""
        return len(self.texts)

    def sample(self, index: int) -> npt.NDArray[np.int64]:
        """Sentence ``index`` as a batch of one: ``(1, tokens)`` int64, a copy
        the caller may write to."""
        return self.tokens[index][None].copy()


def load_sentences(folder: Path | None = None) -> SentenceSet:
    """The sentences of scikit-learn's data set descriptions, tokenised for MiniLM.

    Raises
    ------
    ConfigError
        If scikit-learn or the MiniLM package is missing, or no sentence is
        found.
    """
    from splitlab.minilm import encode

    folder = folder or descriptions_dir()
    texts: list[str] = []
    labels: list[int] = []
    classes: list[str] = []
    for path in sorted(folder.glob("*.rst")):
        found = [
            sentence.strip()
            for paragraph in _paragraphs(path.read_text(encoding="utf-8"))
            for sentence in _SENTENCE_END.split(paragraph)
            if _is_sentence(sentence.strip())
        ]
        if found:
            labels += [len(classes)] * len(found)
            classes.append(path.stem)
            texts += found
    if not texts:
        raise ConfigError(f"data set 'sentences': no sentence found in {folder}")
    return SentenceSet(
        name="sentences",
        texts=tuple(texts),
        tokens=tuple(encode(text) for text in texts),
        labels=np.asarray(labels, dtype=np.int64),
        classes=tuple(classes),
        source=f"scikit-learn data set descriptions, {folder}",
    )
