"""The file formats read at load time: their schemas, and the one typed error a bad file raises.

`MapDatabase.load` raises only `MapFormatError` (or FileNotFoundError), `load_model` only
`ModelFormatError` (or FileNotFoundError), whatever the files hold; the message is one line naming
the file and the problem. Both are ValueError subclasses, so callers that catch ValueError keep
working. Checked here: the map manifest (`MAP_MANIFEST_SCHEMA`) and a checkpoint's safetensors
metadata (`MODEL_METADATA_SCHEMA`); the checks of the files' contents against them (checksums,
.npy headers, keyframe poses, the weights' sha256) are in `cmirl_ros/mapdb/validate.py` and
`cmirl_ros/models/checkpoint.py`, which raise these errors. No heavy imports: the ROS node
imports this module to catch them.
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


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


def one_line(text: str | BaseException) -> str:
    """`text` (or an exception's message) on one line; an exception without a message: its type's name."""
    joined = "; ".join(" ".join(line.split()) for line in str(text).splitlines() if line.strip())
    return joined or (type(text).__name__ if isinstance(text, BaseException) else "")


# ------------------------------------------------------------------------------------------- schemas
# A schema is a dict of key -> schema (a key ending in '?' is optional; other keys of the value are
# allowed, so older or newer writers stay readable), or a leaf: a function returning None when the
# value fits, else what it should be ("an integer >= 1").
Leaf = Callable[[Any], "str | None"]


def schema_problem(value: Any, schema: dict | Leaf, where: str = "") -> str | None:
    """None when `value` fits `schema`, else one line saying which key is wrong and how."""
    if not isinstance(schema, dict):
        expected = schema(value)
        return None if expected is None else f"'{where}' must be {expected}, found {_show(value)}"
    if not isinstance(value, dict):
        return f"'{where}' must be an object, found {_show(value)}" if where else f"expected an object, found {_show(value)}"
    for key, sub in schema.items():
        name = key.rstrip("?")
        if name not in value:
            if key.endswith("?"):
                continue
            return f"lacks '{where}.{name}'" if where else f"lacks '{name}'"
        problem = schema_problem(value[name], sub, f"{where}.{name}" if where else name)
        if problem:
            return problem
    return None


def integer(minimum: int = 0) -> Leaf:
    return lambda v: None if isinstance(v, int) and not isinstance(v, bool) and v >= minimum else f"an integer >= {minimum}"


def one_of(*choices: Any) -> Leaf:
    return lambda v: None if isinstance(v, (str, int, bool)) and v in choices else f"one of {list(choices)}"


def text(v: Any) -> str | None:
    return None if isinstance(v, str) else "a string"


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def sha256_hex(v: Any) -> str | None:
    fits = isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)
    return None if fits else "a sha256 (64 lowercase hex digits)"


def transform_16(v: Any) -> str | None:
    """16 finite numbers, a row-major 4x4 transform (rigidity is checked with the poses)."""
    fits = isinstance(v, list) and len(v) == 16 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
    return None if fits else "16 finite numbers (a row-major 4x4 transform)"


def axes_or_null(v: Any) -> str | None:
    fits = v is None or (isinstance(v, list) and 1 <= len(v) <= 3 and all(integer(0)(a) is None and a <= 2 for a in v))
    return None if fits else "null or a list of axes among 0, 1, 2"


def any_object(v: Any) -> str | None:
    return None if isinstance(v, dict) else "an object"


def _show(value: Any) -> str:
    shown = repr(value)
    return f"{type(value).__name__} {shown[:40] + '...' if len(shown) > 40 else shown}"


# ---------------------------------------------------------------------------------- error conversion
@contextmanager
def refusing(path: str | Path, error: type[FileFormatError], what: str,
             passing: tuple[type[Exception], ...] = (FileNotFoundError,)) -> Iterator[None]:
    """Whatever reading `path` raises (KeyError, TokenError, faiss' RuntimeError, ...) leaves as
    `error(path, f"{what}: ...")`. Typed errors and `passing` ones leave unchanged."""
    try:
        yield
    except (FileFormatError, *passing):
        raise
    except Exception as e:
        raise error(path, f"{what}: {_describe(e, Path(path))}") from e


def _describe(e: Exception, path: Path) -> str:
    message = one_line(str(e)).removeprefix(f"{path}: ")
    if isinstance(e, ValueError) and message and not isinstance(e, UnicodeDecodeError):
        return message
    return f"{type(e).__name__}: {message}" if message else type(e).__name__


# ------------------------------------------------------------------------------ the schemas at load
MAP_FORMAT = "cmirl_map"
MAP_FORMAT_VERSION = 2  # 2: keyframe poses in the map frame of `frame_convention` (z-up for KITTI)
MAP_FILES = ("descriptors.npy", "keyframes.csv", "index.faiss")  # tokens.npy is optional
_MAP_FILE = {"sha256": sha256_hex, "bytes": integer(0)}
MAP_MANIFEST_SCHEMA = {
    "descriptor": {"dim": integer(1), "dtype": one_of("float32"), "metric": one_of("inner_product")},
    "index": {"type": one_of("flat", "hnsw", "ivfpq"), "config": any_object},
    "files": {**{name: _MAP_FILE for name in MAP_FILES}, "tokens.npy?": _MAP_FILE},
    "counts": {"keyframes": integer(0)},
    "model?": {"name?": text, "fingerprint?": text},
    "frame_convention": {"map_frame": text, "source_world": text, "T_map_world": transform_16,
                         "ground_axes?": axes_or_null},
    "tokens?": {"grid?": lambda v: None if isinstance(v, list) and len(v) == 2 and all(
        integer(1)(n) is None for n in v) else "[rows, columns]"},
}

CHECKPOINT_FORMAT = "cmirl_ros.place_model/1"
CHECKPOINT_JSON_KEYS = ("config", "preprocessing", "extra")  # metadata values holding a JSON object


def _json_object(v: Any) -> str | None:
    try:
        return None if isinstance(json.loads(v), dict) else "a JSON object"
    except (TypeError, ValueError):
        return "a JSON object"


MODEL_METADATA_SCHEMA = {
    "format": one_of(CHECKPOINT_FORMAT),
    "name": text,
    "config_hash": sha256_hex,
    "weights_sha256": sha256_hex,
    "fingerprint": text,
    **{key: _json_object for key in CHECKPOINT_JSON_KEYS},
}
