"""The package's shape: small modules, no import cycle (issue 18).

Every module of ``minig3n/`` stays at or under 400 lines, and the graph of imports between minig3n modules
(module-level and function-level ``import``/``from`` statements alike, read with ``ast``) has no cycle.
"""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "minig3n"
MAX_LINES = 400


def _modules() -> dict:
    return {p.stem: p for p in sorted(PKG.glob("*.py"))}


def import_graph() -> dict:
    """{module: set of minig3n modules it imports} for every module of the package."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:                     # from .x import y
                    deps.add(node.module.split(".")[0])
                elif node.level == 1:                                   # from . import x, y
                    deps.update(a.name for a in node.names)
                elif node.level == 0 and node.module and node.module.startswith("minig3n."):
                    deps.add(node.module.split(".")[1])
                elif node.level == 0 and node.module == "minig3n":
                    deps.update(a.name for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name.split(".")[1] for a in node.names if a.name.startswith("minig3n."))
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def find_cycle(graph: dict):
    """One import cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_module_over_400_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    big = {n: s for n, s in sizes.items() if s > MAX_LINES}
    assert len(sizes) > 20 and not big, f"modules over {MAX_LINES} lines: {big}"


def test_no_import_cycle():
    graph = import_graph()
    assert graph["decoder"] >= {"altup", "attention", "ple"}   # the graph really is read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_pure_modules_do_not_import_the_io_module():
    """The math modules take weights as mappings (``params.ParamView``) and never import ``checkpoint``."""
    graph = import_graph()
    pure = ["altup", "attention", "laurel", "mlp", "ple", "ops", "embedder", "usm", "mobilenetv5", "conv2d",
            "mobilenetv5_arch", "padding", "params", "kv_share", "kv_cache", "weight_shapes", "accel"]
    offenders = [m for m in pure if "checkpoint" in graph[m]]
    assert not offenders, f"pure modules importing checkpoint: {offenders}"
