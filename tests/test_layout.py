"""The package's layout: no import cycle among medcore's modules (at module level, and not even through the
imports inside functions), every module imports, and no module grows past a size guard."""
import ast
import importlib
import pkgutil
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medcore"
MAX_LINES = 650  # a guard against regrowth; the aim is about 400 a module


def _modules() -> dict[str, Path]:
    return {".".join(("medcore", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__"): p
            for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(node: ast.AST) -> set[str]:
    """The medcore modules one import statement loads, with the packages above them (their __init__ runs too)."""
    names = set()
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("medcore"):
        names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}  # `from medcore.report import plots`
    elif isinstance(node, ast.Import):
        names |= {a.name for a in node.names}
    parents = {".".join(n.split(".")[:i]) for n in names for i in range(2, n.count(".") + 1)}
    return names | parents


def _module_level(tree: ast.Module):
    """The statements that run when the module is imported: everything but the bodies of functions."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


def import_graph(module_level_only: bool = False) -> dict[str, set[str]]:
    """module -> the medcore modules it imports (`module_level_only`: those imported when it is imported)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        nodes = _module_level(tree) if module_level_only else ast.walk(tree)
        deps = set().union(*(_imported(node) for node in nodes))
        graph[name] = {d for d in deps if d in modules and d not in (name, "medcore")}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep, path + [dep])):
                return found
        state[node] = 2
        return None
    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_tells_module_level_imports_from_those_inside_functions():
    full, top = import_graph(), import_graph(module_level_only=True)
    assert "medcore.bench.peers" in top["medcore.bench.command"]  # a module-level `from medcore.bench.peers import`
    assert {"medcore.bench", "medcore.bench.peers"} <= full["medcore.bench.command"]  # with its package
    assert "medcore.flows.workflows" in full["medcore.bench.peers"]  # imported inside a function only
    assert "medcore.flows.workflows" not in top["medcore.bench.peers"]


def test_no_import_cycle_at_module_level():
    found = cycle(import_graph(module_level_only=True))
    assert found is None, f"module-level import cycle: {' -> '.join(found)}"


def test_no_import_cycle_even_through_imports_inside_functions():
    found = cycle(import_graph())
    assert found is None, f"import cycle (through imports inside functions): {' -> '.join(found)}"


def test_every_module_imports():
    import medcore

    names = [m.name for m in pkgutil.walk_packages(medcore.__path__, "medcore.")]
    assert set(names) >= set(_modules()) - {"medcore"}
    for name in names:
        importlib.import_module(name)


def test_no_module_is_over_the_size_guard():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    over = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them): {over}"


def test_training_and_scoring_commands_import_without_the_notebook_machinery():
    """A GPU machine may have torch and the training libraries but not papermill or Jupyter: the commands that
    train, score and benchmark must still start there."""
    code = (
        "import sys, importlib\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'traitlets', 'papermill', 'nbformat', 'nbclient', 'jupyter_client',\n"
        "                                  'ipykernel', 'myst_nb', 'jupyter_book', 'sphinx'}:\n"
        "            raise ImportError('not installed: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "for m in ['medcore.flows.cli', 'medcore.bench.gpucheck', 'medcore.bench.command', 'medcore.flows.study',\n"
        "          'medcore.flows.evaluate_command', 'medcore.scale.distributed']:\n"
        "    importlib.import_module(m)\n")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
