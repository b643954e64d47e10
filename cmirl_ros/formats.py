"""What a bad file raises: one typed error per kind of file, whose message names the file and the problem.

`MapDatabase.load` raises only `MapFormatError` (or FileNotFoundError), `load_model` only
`ModelFormatError` (or FileNotFoundError), whatever the files hold. Both are ValueError subclasses,
so callers that catch ValueError keep working. The schemas themselves live beside the loaders:
`cmirl_ros/mapdb/validate.py` (map manifest and files) and `cmirl_ros/models/checkpoint.py`
(safetensors metadata).
"""
from __future__ import annotations

from pathlib import Path


class FileFormatError(ValueError):
    """A file whose content is not what its format promises. `str()` is one line: 'PATH: problem'."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = one_line(problem)
        super().__init__(f"{self.path}: {self.problem}")


class MapFormatError(FileFormatError):
    """A map directory's file (manifest.json, descriptors.npy, keyframes.csv, index.faiss, tokens.npy) is bad."""


class ModelFormatError(FileFormatError):
    """A model checkpoint (.safetensors weights and their metadata) is bad."""


def one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())
