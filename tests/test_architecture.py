"""The package's shape, read from its source with `ast` (nothing is imported): every package
import stands at the top of its module (the CLI's lazy imports excepted), the import graph has
no cycle, every import goes down the layers (docs/architecture.md#layers), the root stays
small, and no module grows past a size a reader takes in at once."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "fedln_jax"
LAZY_IMPORTS_ALLOWED = {"fedln_jax.cli"}   # imported lazily for start-up time
MAX_LINES = 400
MAX_ROOT_MODULES = 20

# Bottom to top (docs/architecture.md#layers): a module imports only its own layer and those
# below. Each entry is a module or a package prefix; the first that matches names the layer.
LAYERS = (
    ("base", ("fedln_jax", "fedln_jax.errors", "fedln_jax.version", "fedln_jax.choices")),
    ("runtime", ("fedln_jax.runtime",)),
    ("blocks", ("fedln_jax.models", "fedln_jax.algorithms", "fedln_jax.data")),
    ("config", ("fedln_jax.config", "fedln_jax.config_keys", "fedln_jax.config_help")),
    ("engine", ("fedln_jax.engine",)),
    ("training", ("fedln_jax.training",)),
    ("studies", ("fedln_jax.studies",)),
    ("bench", ("fedln_jax.bench",)),
    ("cli", ("fedln_jax.cli",)),
)


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(node: ast.AST, importer: str) -> list[str]:
    """The package modules an import statement loads (`from fedln_jax import x` loads the
    submodule x when there is one, else the package's __init__)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:   # relative: resolve against the importer's package
        base = importer.split(".")[:-node.level] if not MODULES[importer].name == "__init__.py" \
            else importer.split(".")[:len(importer.split(".")) - node.level + 1]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module or ""
    if name not in MODULES:
        return []
    subs = [f"{name}.{a.name}" for a in node.names if f"{name}.{a.name}" in MODULES]
    plain = [a for a in node.names if f"{name}.{a.name}" not in MODULES]
    return subs + ([name] if plain else [])


def import_nodes(tree: ast.Module):
    """(import node, whether it stands inside a function body) for every import."""
    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                       ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            yield from walk(child, inside)
    yield from walk(tree, False)


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """(module -> package modules it imports at load time, lazy imports found)."""
    graph, lazy = {}, []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = set()
        for node, in_function in import_nodes(tree):
            targets = imported_modules(node, name)
            if in_function and targets and name not in LAZY_IMPORTS_ALLOWED:
                lazy.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports "
                            f"{', '.join(targets)} inside a function")
            if not in_function:
                graph[name].update(t for t in targets if t != name)
    return graph, lazy


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def layer_of(module: str) -> int:
    """Index in LAYERS of the most specific entry naming `module` (or a package above it)."""
    matches = [(len(entry), index) for index, (_, entries) in enumerate(LAYERS)
               for entry in entries if module == entry or module.startswith(entry + ".")]
    assert matches, f"{module} is in no layer of LAYERS"
    return max(matches)[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a lower layer to a higher one, as 'importer (layer) -> imported (layer)'."""
    name = lambda m: f"{m} ({LAYERS[layer_of(m)][0]})"
    return [f"{name(a)} -> {name(b)}" for a in sorted(graph) for b in sorted(graph[a])
            if layer_of(b) > layer_of(a)]


def test_every_import_goes_down_the_layers():
    graph, _ = import_graph()
    lazy_cli = {"fedln_jax.cli": set()}   # the CLI's lazy imports count too
    for node, _ in import_nodes(ast.parse(MODULES["fedln_jax.cli"].read_text())):
        lazy_cli["fedln_jax.cli"].update(imported_modules(node, "fedln_jax.cli"))
    assert upward_imports({**graph, **lazy_cli}) == []


def test_the_layer_check_catches_an_upward_import():
    """On a made-up graph: the engine importing the training layer, and a study importing the
    bench, are both reported; downward imports are not."""
    graph = {"fedln_jax.engine.round": {"fedln_jax.training.train", "fedln_jax.errors"},
             "fedln_jax.studies.figures": {"fedln_jax.bench.speed", "fedln_jax.engine.round"}}
    assert upward_imports(graph) == [
        "fedln_jax.engine.round (engine) -> fedln_jax.training.train (training)",
        "fedln_jax.studies.figures (studies) -> fedln_jax.bench.speed (bench)"]


def test_the_root_holds_few_modules():
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, root


def test_package_modules_are_imported_at_module_top():
    _, lazy = import_graph()
    assert lazy == []


def test_package_import_graph_has_no_cycle():
    graph, _ = import_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    lines = MODULES[name].read_text().count("\n")
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines (at most {MAX_LINES})"


def test_the_checks_catch_a_cycle_and_a_lazy_import():
    """The helpers above on a made-up graph and source: they can fail."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    source = ast.parse("import os\ndef f():\n    from fedln_jax.training import train\n")
    found = [(imported_modules(n, "fedln_jax.cli"), inside) for n, inside in import_nodes(source)]
    assert found == [([], False), (["fedln_jax.training.train"], True)]
