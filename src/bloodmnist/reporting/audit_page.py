"""audit.html: the `bloodmnist data audit` result as one self-contained page, with every
offending pair shown side by side (images as base64 PNG data URIs, enlarged without smoothing)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bloodmnist.atomic import write_text_atomic
from bloodmnist.data.npz import Dataset
from bloodmnist.reporting.html import CSS

#: Pairs shown per section; the JSON lists them all.
MAX_PAIRS = 200
_SHOWN_PX = 112


def _png(img: np.ndarray) -> str:
    scale = max(1, _SHOWN_PX // img.shape[0])
    pil = Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _cell(ref: dict[str, Any], ds: Dataset) -> str:
    img = ds.split(ref["split"]).images[ref["index"]]
    text = html.escape(f"{ref['split']} #{ref['index']}: {ref['class']} ({ref['label']})")
    return f'<td class="l"><img src="{_png(img)}" alt="{text}"><br>{text}</td>'


def _pair_rows(pairs: list[tuple[dict, dict, str]], ds: Dataset) -> str:
    rows = [
        f"<tr>{_cell(a, ds)}{_cell(b, ds)}<td class='l'>{html.escape(note)}</td></tr>"
        for a, b, note in pairs[:MAX_PAIRS]
    ]
    more = f"<p>{len(pairs) - MAX_PAIRS} more in audit.json.</p>" if len(pairs) > MAX_PAIRS else ""
    head = "<tr><th class='l'>image A</th><th class='l'>image B</th><th class='l'>note</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>{more}" if rows else "<p>None found.</p>"


def _balance(result: dict[str, Any]) -> str:
    names = result["class_names"]
    splits = list(result["balance"])
    head = "<tr><th class='l'>class</th>" + "".join(f"<th>{s}</th>" for s in splits) + "</tr>"
    body = "".join(
        f"<tr><td class='l'>{html.escape(n)}</td>"
        + "".join(f"<td>{result['balance'][s][n]}</td>" for s in splits)
        + "</tr>"
        for n in names
    )
    return f"<table>{head}{body}</table>"


def _leakage(result: dict[str, Any]) -> str:
    head = "<tr><th class='l'>images of</th><th>with a duplicate</th><th>of</th><th>share</th></tr>"
    body = "".join(
        f"<tr><td class='l'>{k.replace('_in_', ' in ')}</td><td>{v['images']}</td>"
        f"<td>{v['of']}</td><td>{v['fraction']:.4%}</td></tr>"
        for k, v in result["leakage"].items()
    )
    return f"<table>{head}{body}</table>"


def _copies(pair: dict[str, Any]) -> str:
    """', 40 x 25 copies' where a side of a near pair stands for identical copies."""
    a, b = pair.get("copies", [1, 1])
    return f", {a} x {b} copies" if a * b > 1 else ""


def write_audit_html(
    result: dict[str, Any], ds: Dataset, path: Path, exclusive: bool = False
) -> Path:
    """Write the page for an `audit()` result of `ds` to `path` (atomically; with `exclusive`
    never over an existing file: FileExistsError)."""
    exact = []
    for g in result["exact_duplicates"]["groups"]:
        first, *rest = g["members"]
        for m in rest:
            flags = [k for k in ("cross_split", "cross_label") if g[k]]
            exact.append((first, m, "identical pixels" + "".join(f", {f}" for f in flags)))
    near = [
        (
            p["a"],
            p["b"],
            f"RMS {p['rms']:.2f}" + _copies(p) + (", cross_label" if p["cross_label"] else ""),
        )
        for p in result["near_duplicates"]["pairs"]
    ]
    conflicts = [(p["a"], p["b"], p["kind"]) for p in result["cross_label"]["pairs"]]
    title = f"Data audit: {Path(result['path']).name}"
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(result['path'])}, {result['image_size']} px. Exact: "
        f"{html.escape(result['method']['exact'])}. Near: {html.escape(result['method']['near'])}."
        "</p>",
        "<h2>Class balance</h2>",
        _balance(result),
        "<h2>Train/val/test leakage</h2>",
        _leakage(result),
        f"<h2>Duplicates with different labels ({result['cross_label']['n_pairs']} pairs)</h2>",
        _pair_rows(conflicts, ds),
        f"<h2>Exact duplicates ({result['exact_duplicates']['n_groups']} groups)</h2>",
        _pair_rows(exact, ds),
        f"<h2>Near duplicates ({len(near)})</h2>",
        _pair_rows(near, ds),
    ]
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>"
        f"{html.escape(title)}</title><style>{CSS}</style></head><body><main>"
        + "\n".join(sections)
        + "</main></body></html>\n"
    )
    write_text_atomic(path, page, exclusive)
    return path
