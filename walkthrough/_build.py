"""Writes the walkthrough chapters (``NN_topic.ipynb``) from the cell sources in ``_chapters.py``.

The chapters are Jupyter notebooks (nbformat 4.5), committed *without outputs* so diffs stay small. This
script is their source of truth: edit ``_chapters.py``, then run

    python walkthrough/_build.py            # rewrite every chapter
    python walkthrough/_build.py --check    # exit 1 if a committed .ipynb differs from what would be written

No Jupyter needed: a notebook is a JSON file, written here with the standard library only.
tests/test_walkthrough.py runs ``--check`` and executes every chapter's code cells.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _chapters import CHAPTERS  # noqa: E402  (a sibling module, not a package)


def _lines(text: str) -> list[str]:
    lines = text.strip("\n").split("\n")
    return [line + "\n" for line in lines[:-1]] + [lines[-1]]


def notebook(cells: list[tuple[str, str]]) -> dict:
    """[(kind, source)] with kind "md" or "code" -> an nbformat 4.5 notebook without outputs."""
    out = []
    for i, (kind, source) in enumerate(cells):
        cell = {"cell_type": "markdown" if kind == "md" else "code", "id": f"cell-{i:02d}", "metadata": {},
                "source": _lines(source)}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        out.append(cell)
    return {"cells": out,
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def render(cells) -> str:
    return json.dumps(notebook(cells), indent=1, sort_keys=True, ensure_ascii=False) + "\n"  # as Jupyter writes


def navigation(names: list[str], i: int) -> tuple[str, str]:
    """A closing markdown cell linking the previous chapter, the index and the next chapter."""
    links = []
    if i > 0:
        links.append(f"previous: [{names[i - 1]}]({names[i - 1]}.ipynb)")
    links.append("[all chapters](README.md) · [assignments](ASSIGNMENTS.md)")
    if i + 1 < len(names):
        links.append(f"next: [{names[i + 1]}]({names[i + 1]}.ipynb)")
    return ("md", " | ".join(links))


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    names = list(CHAPTERS)
    for i, (name, cells) in enumerate(CHAPTERS.items()):
        path = HERE / f"{name}.ipynb"
        text = render(list(cells) + [navigation(names, i)])
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(HERE.parent)}")
    if check:
        stale += sorted(p.name for p in HERE.glob("[0-9][0-9]_*.ipynb") if p.stem not in CHAPTERS)
    if stale:
        print("out of date (run python walkthrough/_build.py): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
