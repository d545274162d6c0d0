"""Writes and executes the walkthrough chapters (``NN_topic.ipynb``) from the cell sources in ``_chapters.py``.

The chapters are committed **with their outputs** (figures visible on GitHub). This script is their source
of truth: edit ``_chapters.py``, then

    python walkthrough/_build.py --execute            # rewrite and execute every chapter (about a minute)
    python walkthrough/_build.py --execute 03 09      # only chapters 03 and 09
    python walkthrough/_build.py --check              # exit 1 if a committed chapter is stale (no kernel needed)

``--execute`` runs each chapter in a real Jupyter kernel (nbclient + ipykernel, the ``walkthrough`` extra)
started in ``walkthrough/``, with one BLAS/OpenMP thread, then makes the outputs reproducible: execution
timestamps dropped, execution counts 1, 2, 3 ..., and it records in the notebook's metadata
(``minig3n.source_sha256``) a hash of the chapter's cells and of every repository file the kernel imported
(``minig3n.imports``: ``minig3n/*.py``, ``tests/golden_io.py`` ...). ``--check`` recomputes that hash from
the current files: a chapter whose cells or imported code changed since it was executed is stale.
Figures are PNGs written by the chapter's ``show(fig)`` (fixed dpi, no metadata chunk), so executing twice
gives identical bytes.

Without ``--execute`` the chapters are written without outputs (quick, for editing; ``--check`` then fails).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _chapters import CHAPTERS  # noqa: E402  (a sibling module, not a package)

# Appended while executing, removed before saving: which repository files did the chapter import?
_IMPORTS_PROBE = '''
import json as _json, sys as _sys
from pathlib import Path as _Path
_root = ROOT.resolve()
_files = set()
for _m in list(_sys.modules.values()):
    _f = getattr(_m, "__file__", None)
    if _f:
        _p = _Path(_f).resolve()
        if _root in _p.parents and _p.suffix == ".py" and ".venv" not in _p.parts:
            _files.add(_p.relative_to(_root).as_posix())
print(_json.dumps(sorted(_files)))
'''


def _lines(text: str, keep_end: bool = False) -> list[str]:
    """A cell's source (stripped of leading/trailing blank lines) or, keep_end, an output's text as a list
    of lines, the way Jupyter stores them."""
    if keep_end:
        return text.splitlines(keepends=True)
    lines = text.strip("\n").split("\n")
    return [line + "\n" for line in lines[:-1]] + [lines[-1]]


def navigation(names: list[str], i: int) -> tuple[str, str]:
    """A closing markdown cell linking the previous chapter, the index and the next chapter."""
    links = []
    if i > 0:
        links.append(f"previous: [{names[i - 1]}]({names[i - 1]}.ipynb)")
    links.append("[all chapters](README.md) · [assignments](ASSIGNMENTS.md)")
    if i + 1 < len(names):
        links.append(f"next: [{names[i + 1]}]({names[i + 1]}.ipynb)")
    return ("md", " | ".join(links))


def chapter_cells(name: str) -> list[tuple[str, str]]:
    names = list(CHAPTERS)
    return list(CHAPTERS[name]) + [navigation(names, names.index(name))]


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


def render(nb: dict) -> str:
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"   # as Jupyter writes


def source_hash(nb: dict, imports: list[str]) -> str:
    """sha256 over the cells (kind and source) and the bytes of every imported repository file."""
    h = hashlib.sha256()
    for cell in nb["cells"]:
        h.update(cell["cell_type"].encode() + b"\0" + "".join(cell["source"]).encode() + b"\0")
    for rel in sorted(imports):
        path = ROOT / rel
        h.update(rel.encode() + b"\0" + (path.read_bytes() if path.exists() else b"<missing>") + b"\0")
    return h.hexdigest()


def _clean_outputs(nb: dict) -> None:
    """Deterministic outputs: no timestamps, counts 1.., no transient display ids."""
    n = 0
    for cell in nb["cells"]:
        cell["metadata"] = {}
        if cell["cell_type"] != "code":
            continue
        n += 1
        cell["execution_count"] = n
        merged = []        # the kernel flushes stdout on a timer: join consecutive stream pieces
        for out in cell["outputs"]:
            if (out.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream"
                    and merged[-1]["name"] == out["name"]):
                merged[-1]["text"] = _lines("".join(merged[-1]["text"]) + "".join(out["text"]), keep_end=True)
            else:
                merged.append(out)
        cell["outputs"] = merged
        for out in cell["outputs"]:
            out.pop("transient", None)
            if "execution_count" in out:
                out["execution_count"] = n
            if out.get("output_type") == "error":
                raise RuntimeError(f"a cell raised {out.get('ename')}: {out.get('evalue')}")


def execute(name: str, nb: dict, timeout: int = 900) -> dict:
    """Run ``nb`` in a fresh python3 kernel started in walkthrough/; return it with outputs and metadata."""
    import nbformat
    from nbclient import NotebookClient

    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                      PYTHONHASHSEED="0", MPLBACKEND="Agg")
    probe = {"cell_type": "code", "id": "imports-probe", "metadata": {}, "source": _IMPORTS_PROBE,
             "execution_count": None, "outputs": []}
    node = nbformat.reads(json.dumps({**nb, "cells": nb["cells"] + [probe]}), as_version=4)
    NotebookClient(node, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(HERE)}}).execute()
    done = json.loads(nbformat.writes(node))       # plain dicts again, multi-line strings as lists of lines
    probe_out = done["cells"].pop()["outputs"]
    imports = json.loads("".join("".join(o["text"]) for o in probe_out if o.get("name") == "stdout"))
    _clean_outputs(done)
    done["metadata"] = {**nb["metadata"], "minig3n": {"imports": imports, "source_sha256": source_hash(done, imports)}}
    return done


def problems(path: Path, name: str) -> list[str]:
    """Why the committed chapter at ``path`` is not current; [] when it is."""
    if not path.exists():
        return ["missing"]
    nb = json.loads(path.read_text(encoding="utf-8"))
    want = notebook(chapter_cells(name))
    got_cells = [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]
    if got_cells != [(c["cell_type"], "".join(c["source"])) for c in want["cells"]]:
        return ["its cells differ from _chapters.py"]
    meta = nb.get("metadata", {}).get("minig3n")
    if not meta:
        return ["never executed (no minig3n metadata)"]
    if source_hash(nb, meta["imports"]) != meta["source_sha256"]:
        return ["its cells or the code it imports changed since it was executed"]
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    if any(c.get("execution_count") is None for c in code):
        return ["a code cell was not executed"]
    return []


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("chapters", nargs="*", help="chapter numbers or names (default: all)")
    ap.add_argument("--execute", action="store_true", help="execute in a Jupyter kernel and store the outputs")
    ap.add_argument("--check", action="store_true", help="exit 1 if a committed chapter is stale")
    args = ap.parse_args(argv)
    names = [n for n in CHAPTERS if not args.chapters or any(n == c or n.startswith(c) for c in args.chapters)]
    if args.chapters and not names:
        print(f"no chapter matches {args.chapters}; chapters: {', '.join(CHAPTERS)}", file=sys.stderr)
        return 2
    if args.check:
        stale = [f"{n}.ipynb: {why}" for n in names for why in problems(HERE / f"{n}.ipynb", n)]
        stale += sorted(f"{p.name}: not in _chapters.py" for p in HERE.glob("[0-9][0-9]_*.ipynb")
                        if p.stem not in CHAPTERS)
        if stale:
            print("out of date (run python walkthrough/_build.py --execute):\n  " + "\n  ".join(stale))
            return 1
        print(f"{len(names)} chapters current")
        return 0
    for name in names:
        nb = notebook(chapter_cells(name))
        if args.execute:
            t0 = time.perf_counter()
            nb = execute(name, nb)
            print(f"executed {name}.ipynb in {time.perf_counter() - t0:.1f} s", flush=True)
        (HERE / f"{name}.ipynb").write_text(render(nb), encoding="utf-8")
        if not args.execute:
            print(f"wrote {name}.ipynb (no outputs: run with --execute before committing)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
