"""Turn the user's INPUT arguments (files, folders, globs) and MODEL argument into paths.

Torch-free, like everything the ONNX prediction path imports.
"""

from __future__ import annotations

import glob
from pathlib import Path

from bloodmnist.errors import BloodMNISTError

#: Suffixes picked up from folders and globs; a file named explicitly is always tried.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
_GLOB_CHARS = set("*?[")


class InferenceError(BloodMNISTError):
    """Bad predict/export arguments: a missing model or input, an impossible option."""


def _is_image_name(path: Path) -> bool:
    # Hidden files (.DS_Store, macOS "._x.jpg" resource forks) are never images.
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _walk(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, in a stable (sorted) order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and _is_image_name(p))


def expand_inputs(items: list[str]) -> list[Path]:
    """Files as given, folders recursively, globs expanded; duplicates dropped, order kept.

    Raises InferenceError for an argument that matches nothing, or when no image file results.
    """
    found: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found.extend(_walk(path))
        elif path.exists():
            found.append(path)
        elif _GLOB_CHARS & set(item):
            matches = sorted(glob.glob(str(path), recursive=True))
            if not matches:
                raise InferenceError(f"INPUT {item!r} matches no file; check the pattern")
            for match in map(Path, matches):
                if match.is_dir():
                    found.extend(_walk(match))
                elif _is_image_name(match):
                    found.append(match)
        else:
            raise InferenceError(f"INPUT {item!r} does not exist (no such file, folder or glob)")
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    if not unique:
        raise InferenceError(
            f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {' '.join(items)}"
        )
    return unique


def resolve_model(target: str | Path) -> Path:
    """A run folder means its checkpoints/best.pt; a file (.pt or .onnx) is used as is."""
    path = Path(target).expanduser()
    if path.is_dir():
        ckpt = path / "checkpoints" / "best.pt"
        if not ckpt.is_file():
            raise InferenceError(
                f"{path} has no checkpoints/best.pt; pass a run folder, a .pt checkpoint or a "
                ".onnx model"
            )
        return ckpt
    if not path.is_file():
        raise InferenceError(f"model not found: {path}; pass a run folder, .pt or .onnx file")
    return path


def class_index(requested: str | None, names: list[str], option: str = "class") -> int | None:
    """A class given by name or index (`explain --class`, serve's `class=`); None or "" means
    each image's predicted class. An unknown one is an InferenceError naming `option` and the
    choices."""
    if requested is None or requested == "":
        return None
    if requested in names:
        return names.index(requested)
    if requested.isascii() and requested.isdigit() and int(requested) < len(names):  # not '²'
        return int(requested)
    raise InferenceError(
        f"unknown {option} {requested!r}; use a name ({', '.join(names)}) or 0..{len(names) - 1}"
    )
