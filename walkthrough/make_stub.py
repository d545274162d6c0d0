"""Start an assignment: write ``<dir>/<module>.py`` with minig3n's signatures and docstrings, bodies
``raise NotImplementedError``.

    python walkthrough/make_stub.py laurel ~/my_g3n                 # every function of minig3n/laurel.py
    python walkthrough/make_stub.py attention ~/my_g3n apply_rope rope_inv_freq   # just these two

Then implement the bodies and grade them (walkthrough/ASSIGNMENTS.md):

    MINIG3N_STUDENT=~/my_g3n pytest -m text -k laurel

Only module-level functions are stubbed (classes such as ``KVCache`` or ``Tokenizer`` you write yourself);
functions you do not stub stay minig3n's. minig3n's relative imports are written out as absolute ones
(``from minig3n.ops import linear, rms_norm``): a student file is imported by path, not as part of minig3n.
An existing file is never overwritten.
"""
from __future__ import annotations

import ast
import importlib.util
import sys
import textwrap
from pathlib import Path


def stub_source(module: str, functions: list[str] | None = None) -> str:
    """The text of a stub for ``minig3n.<module>`` (all its public functions, or ``functions``)."""
    spec = importlib.util.find_spec(f"minig3n.{module}")
    if spec is None or spec.origin is None:
        raise SystemExit(f"make_stub: minig3n has no module {module!r} (see minig3n/*.py)")
    src = Path(spec.origin).read_text(encoding="utf-8")
    tree = ast.parse(src)
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    wanted = functions or [name for name in defs if not name.startswith("_")]
    unknown = [f for f in wanted if f not in defs]
    if unknown:
        raise SystemExit(f"make_stub: minig3n.{module} defines no function {unknown}; it has {sorted(defs)}")

    out = [f'"""My re-implementation of minig3n.{module}: {", ".join(wanted)}.\n\n'
           f'Graded by the golden tests with MINIG3N_STUDENT=<this folder> (walkthrough/ASSIGNMENTS.md).\n"""',
           "from __future__ import annotations", ""]
    for node in tree.body:                               # minig3n's imports, made absolute
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = node.module or ""
            if node.level:
                base = "minig3n" + ("." + base if base else "")
            names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in node.names)
            out.append(f"from {base} import {names}  # noqa: F401")
        elif isinstance(node, ast.Import):
            out.append(ast.unparse(node) + "  # noqa: F401")
    shared = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    for n in tree.body:                                  # module constants (defaults such as N_MELS use them)
        targets = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AnnAssign) else []
        shared += [t.id for t in targets if isinstance(t, ast.Name) and not t.id.startswith("_")]
    if shared:
        out.append(f"from minig3n.{module} import {', '.join(dict.fromkeys(shared))}  # noqa: F401  constants, classes")
    for name in wanted:
        node = defs[name]
        header = f"def {name}({ast.unparse(node.args)})"
        if node.returns is not None:
            header += f" -> {ast.unparse(node.returns)}"
        doc = ast.get_docstring(node, clean=True) or ""
        body = textwrap.indent(f'"""{doc}"""\n' if doc else "", "    ")
        out += ["", "", header + ":", body + "    raise NotImplementedError"]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().split("\n\n")[1])
        return 2
    module, folder, functions = argv[0].removesuffix(".py"), Path(argv[1]).expanduser(), argv[2:]
    path = folder / f"{module}.py"
    if path.exists():
        print(f"make_stub: {path} exists; not overwriting it")
        return 1
    text = stub_source(module, functions or None)
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}; now: MINIG3N_STUDENT={folder} pytest ... (walkthrough/ASSIGNMENTS.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
