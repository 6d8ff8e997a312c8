"""Python files a user points to: their own algorithms and models.

A scenario may name ``path/to/file.py:NAME`` for its algorithm or its model,
or ``path/to/model.onnx`` for its model.
Such a file is trusted code chosen by the user on the machine that reads it
(the base station, or a device for its model); it is imported by path, never
fetched or received over the network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from splitlab.errors import ConfigError


def is_reference(text: str) -> bool:
    """Whether ``text`` has the form ``FILE.py:NAME`` (or ``entrypoint:NAME``)."""
    head, _, tail = text.rpartition(":")
    return bool(head) and bool(tail)


def is_onnx_file(text: str) -> bool:
    """Whether ``text`` names an ONNX model file (``path/to/model.onnx``)."""
    return text.lower().endswith(".onnx")


def import_file(path: Path, *, role: str = "algorithm") -> ModuleType:
    """Import the Python file at ``path`` as a fresh module.

    ``role`` names what the file provides, for error messages.
    """
    if not path.is_file():
        raise ConfigError(f"{role} file {path} does not exist or is not a file")
    resolved = path.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    module_name = f"splitlab_user_{role}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{role} file {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs, as a normal import is, so that dataclasses
    # inside the file can find their module.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as error:
        del sys.modules[module_name]
        if not isinstance(error, Exception):
            raise
        raise ConfigError(
            f"{role} file {path} raised {type(error).__name__} while importing: {error}"
        ) from error
    return module
