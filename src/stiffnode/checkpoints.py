"""Result and checkpoint files that are whole or absent: one `.npz` per unit of work (named
arrays plus JSON metadata), written to a temporary beside it, synced and renamed into place,
so that a crash leaves the previous file or the new one, never a mix. A file that cannot be
read back whole (truncated, empty, not a zip, missing an entry, a bad checksum) raises
`DamagedFileError` naming it; `load_or_set_aside` moves such a file aside (`*.damaged`) with
a warning, so that its work is recomputed.

Used by every resumable run: `trials.train_trials`' checkpoints, the seed study's trial
files, `flow.run`'s checkpoint, the studies' JSON summaries (`write_text`,
`read_json_or_set_aside`).
"""

import json
import os
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

_META = "__meta__"


class DamagedFileError(ValueError):
    """A result or checkpoint file that cannot be read back whole; `.path` names it."""

    def __init__(self, path: os.PathLike | str, reason: str):
        super().__init__(f"{os.fspath(path)} is damaged: {reason}")
        self.path = Path(path)


def _replace_atomically(path: Path, write) -> None:
    """`write(f)` into a temporary beside `path`, synced, then renamed to `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: os.PathLike | str, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    _replace_atomically(Path(path), lambda f: f.write(text.encode()))


def read_json_or_set_aside(path: os.PathLike | str, default):
    """The JSON in `path`; `default` if there is none, or if it does not parse (then it is
    moved aside with a warning, as `load_or_set_aside` does)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except (ValueError, UnicodeDecodeError) as e:
        moved = set_aside(path)
        warnings.warn(
            f"{path} is damaged: {type(e).__name__}: {e}; moved to {moved} and recomputing it",
            stacklevel=2,
        )
        return default


def save(
    path: os.PathLike | str,
    arrays: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Write `arrays` (name -> array) and `meta` (JSON-serialisable) to `path` atomically."""
    if _META in arrays:
        raise ValueError(f"{_META!r} is reserved for the metadata")
    entries = {k: np.asarray(v) for k, v in arrays.items()}
    entries[_META] = np.array(json.dumps(dict(meta or {})))
    _replace_atomically(Path(path), lambda f: np.savez(f, **entries))


def load(
    path: os.PathLike | str, required: Iterable[str] = ()
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """`(arrays, meta)` from a file written by `save`; `DamagedFileError` if it cannot be
    read whole or lacks one of the `required` entries (arrays or metadata keys)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            # Reading every entry checks each one's CRC (a truncated member fails here).
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays.pop(_META))) if _META in arrays else {}
    except FileNotFoundError:
        raise
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DamagedFileError(path, f"{type(e).__name__}: {e}") from None
    missing = [k for k in required if k not in arrays and k not in meta]
    if missing:
        raise DamagedFileError(path, f"no {', '.join(missing)} in it (an incomplete file)")
    return arrays, meta


def set_aside(path: os.PathLike | str) -> Path:
    """Rename `path` to `path.damaged` (`.damaged-2`, ... if taken); returns the new name."""
    path = Path(path)
    target, k = path.with_name(path.name + ".damaged"), 1
    while target.exists():
        k += 1
        target = path.with_name(f"{path.name}.damaged-{k}")
    os.replace(path, target)
    return target


def load_or_set_aside(
    path: os.PathLike | str, required: Iterable[str] = ()
) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """`load(path)`; `None` if there is no such file, or if it is damaged: then it is moved
    aside (`set_aside`) with a warning naming both paths, and its work is to be redone."""
    try:
        return load(path, required)
    except FileNotFoundError:
        return None
    except DamagedFileError as e:
        moved = set_aside(path)
        warnings.warn(f"{e}; moved to {moved} and recomputing it", stacklevel=2)
        return None


def tree_arrays(tree, prefix: str) -> dict[str, np.ndarray]:
    """The array leaves of `tree` as `{prefix_i: leaf}` (host copies)."""
    return {f"{prefix}_{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(tree))}


def tree_from_arrays(arrays: Mapping[str, np.ndarray], like, prefix: str, *, what: str):
    """`like`'s structure with the leaves `prefix_i` of `arrays`; a `ValueError` naming
    `what` (e.g. "the checkpoint was made by another optimizer") if their number, shapes or
    dtypes differ from `like`'s."""
    leaves, treedef = jax.tree.flatten(like)
    stored = sorted(
        (k for k in arrays if k.startswith(prefix + "_") and k[len(prefix) + 1 :].isdigit()),
        key=lambda k: int(k[len(prefix) + 1 :]),
    )
    if len(stored) != len(leaves):
        raise ValueError(f"{what}: it holds {len(stored)} arrays where {len(leaves)} are expected")
    out = []
    for key, leaf in zip(stored, leaves, strict=True):
        a = arrays[key]
        dtype = np.asarray(leaf).dtype
        if np.shape(a) != np.shape(leaf) or a.dtype != dtype:
            raise ValueError(
                f"{what}: {key} is {a.dtype}{list(np.shape(a))} where "
                f"{dtype}{list(np.shape(leaf))} is expected"
            )
        out.append(a)
    return jax.tree.unflatten(treedef, out)
