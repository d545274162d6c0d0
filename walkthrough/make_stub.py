"""Start an assignment: write ``<dir>/<module>.py`` with minig3n's signatures and docstrings, bodies
``raise NotImplementedError``.

    python walkthrough/make_stub.py laurel ~/my_g3n                 # every function of minig3n/laurel.py
    python walkthrough/make_stub.py attention ~/my_g3n apply_rope rope_inv_freq   # just these two

Then implement the bodies and grade them (walkthrough/ASSIGNMENTS.md):

    python -m tests.grade --student ~/my_g3n --only laurel        # points and feedback
    MINIG3N_STUDENT=~/my_g3n pytest -m text -k laurel              # minig3n's own tests on your code

Module-level functions are stubbed, and so are the classes the grader grades (``KVCache``, ``StreamDecoder``,
``Generator``: the ``function`` column of tests/grading/points.csv): their fields, and every method raising
``NotImplementedError``. Other classes and constants (``SamplingParams``, ``BlockSpec``, ``N_MELS``) are
imported from minig3n. Functions you do not stub stay minig3n's (the MINIG3N_STUDENT seam) or are
"missing" (the grader, ``python -m tests.grade``). minig3n's relative imports are written out as absolute ones
(``from minig3n.ops import linear, rms_norm``): your folder is a package of its own, not part of minig3n.
An existing file is never overwritten.
"""
from __future__ import annotations

import ast
import csv
import importlib.util
import sys
import textwrap
from pathlib import Path


POINTS = Path(__file__).resolve().parent.parent / "tests" / "grading" / "points.csv"


def graded_names(module: str) -> set[str]:
    """The names tests/grading/points.csv grades in ``module`` (functions and classes)."""
    if not POINTS.is_file():
        return set()
    with open(POINTS, newline="", encoding="utf-8") as f:
        return {r["function"] for r in csv.DictReader(f) if r["module"] == module}


def _class_stub(node: ast.ClassDef) -> str:
    """A graded class: decorators, bases, docstring and fields kept; every method raises NotImplementedError."""
    out = [f"@{ast.unparse(d)}" for d in node.decorator_list]
    bases = ", ".join(ast.unparse(b) for b in node.bases)
    out.append(f"class {node.name}" + (f"({bases})" if bases else "") + ":")
    doc = ast.get_docstring(node, clean=True)
    if doc:
        out.append(textwrap.indent(f'"""{doc}"""', "    "))
    for item in node.body:
        if isinstance(item, ast.AnnAssign):
            out.append("    " + ast.unparse(item))
        elif isinstance(item, ast.FunctionDef):
            out.append("")
            out += [f"    @{ast.unparse(d)}" for d in item.decorator_list]
            header = f"    def {item.name}({ast.unparse(item.args)})"
            if item.returns is not None:
                header += f" -> {ast.unparse(item.returns)}"
            mdoc = ast.get_docstring(item, clean=True)
            out.append(header + ":")
            if mdoc:
                out.append(textwrap.indent(f'"""{mdoc}"""', "        "))
            out.append("        raise NotImplementedError")
    return "\n".join(out)


def stub_source(module: str, functions: list[str] | None = None) -> str:
    """The text of a stub for ``minig3n.<module>`` (all its public functions, or ``functions``)."""
    spec = importlib.util.find_spec(f"minig3n.{module}")
    if spec is None or spec.origin is None:
        raise SystemExit(f"make_stub: minig3n has no module {module!r} (see minig3n/*.py)")
    src = Path(spec.origin).read_text(encoding="utf-8")
    tree = ast.parse(src)
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    class_nodes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    graded = graded_names(module)
    # graded names minig3n defines in another file and re-exports here (mobilenetv5.conv2d lives in conv2d.py
    # once the module is split): stub them too, from their own definition
    moved = [n for n in sorted(graded) if n not in defs and n not in class_nodes]
    if moved:
        mod = importlib.import_module(f"minig3n.{module}")
        for name in moved:
            obj = getattr(mod, name, None)
            origin = getattr(obj, "__module__", "") or ""
            if not origin.startswith("minig3n."):
                continue
            other = ast.parse(Path(importlib.util.find_spec(origin).origin).read_text(encoding="utf-8"))
            for n in other.body:
                if isinstance(n, ast.FunctionDef) and n.name == name:
                    defs[name] = n
                elif isinstance(n, ast.ClassDef) and n.name == name:
                    class_nodes[name] = n
    classes = set(class_nodes)
    default = [n for n in defs if not n.startswith("_") and (n in graded or n in {d.name for d in tree.body
                                                                                 if isinstance(d, ast.FunctionDef)})]
    wanted = [f for f in functions if f not in classes] if functions else default
    unknown = [f for f in (functions or []) if f not in defs and f not in classes]
    if unknown:
        raise SystemExit(f"make_stub: minig3n.{module} defines no function {unknown}; it has {sorted(defs)}")

    own_classes = [class_nodes[n] for n in class_nodes if n in graded and (functions is None or n in functions)]
    stubbed = set(wanted) | {n.name for n in own_classes}
    out = [f'"""My re-implementation of minig3n.{module}: {{NAMES}}.\n\n'
           f'Graded by the golden tests with MINIG3N_STUDENT=<this folder> (walkthrough/ASSIGNMENTS.md).\n"""',
           "from __future__ import annotations", ""]
    for node in tree.body:                               # minig3n's imports, made absolute
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = node.module or ""
            if node.level:
                base = "minig3n" + ("." + base if base else "")
            kept = [a for a in node.names if (a.asname or a.name) not in stubbed]
            if not kept:
                continue
            names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in kept)
            out.append(f"from {base} import {names}  # noqa: F401")
        elif isinstance(node, ast.Import):
            out.append(ast.unparse(node) + "  # noqa: F401")
    shared = [n.name for n in tree.body if isinstance(n, ast.ClassDef) and n.name not in stubbed]
    for n in tree.body:                                  # module constants (defaults such as N_MELS use them)
        targets = n.targets if isinstance(n, ast.Assign) else [n.target] if isinstance(n, ast.AnnAssign) else []
        shared += [t.id for t in targets if isinstance(t, ast.Name) and not t.id.startswith("_")]
    if shared:
        out.append(f"from minig3n.{module} import {', '.join(dict.fromkeys(shared))}  # noqa: F401  constants, classes")
    out[0] = out[0].replace("{NAMES}", ", ".join([n.name for n in own_classes] + wanted))
    for node in own_classes:
        out += ["", "", _class_stub(node)]
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
