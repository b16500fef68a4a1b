"""No import cycles in the package, function-level imports included (issue 19): a module graph read with ``ast``."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# installed package name -> folder of the checkout (pyproject.toml's package-dir)
PACKAGES = {"rlvision": "rlvision", "rlvision.envs": "envs", "rlvision.agents": "agents"}


def module_files() -> dict[str, str]:
    files = {}
    for package, folder in PACKAGES.items():
        for dirpath, _, names in os.walk(os.path.join(ROOT, folder)):
            for file in names:
                if file.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, file), os.path.join(ROOT, folder))[:-3]
                    rel = rel.replace(os.sep, ".").removesuffix("__init__").rstrip(".")
                    files[f"{package}.{rel}" if rel else package] = os.path.join(dirpath, file)
    return files


def import_graph(files: dict[str, str]) -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its body (``from .x import y`` counts x, and y when y
    is a module)."""
    graph = {}
    for name, path in files.items():
        base = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        edges = set()
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    parent = base
                    for _ in range(node.level - 1):
                        parent = parent.rpartition(".")[0]
                    module = f"{parent}.{module}" if module else parent
                targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
            else:
                continue
            edges |= {t for t in targets if t in files and t != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_package():
    files = module_files()
    assert {"rlvision.registry", "rlvision.agents.factory", "rlvision.envs.factory"} <= set(files)
    graph = import_graph(files)
    assert "rlvision.registry" in graph["rlvision.backbones.mobilenetv4"]  # the graph sees imports
    assert cycles(graph) == []


def test_the_registry_knows_no_family():
    """registry.py imports no family module and names none in its code (docstrings may give examples)."""
    with open(os.path.join(ROOT, "rlvision", "registry.py")) as f:
        tree = ast.parse(f.read())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    strings = [node.value.lower() for node in ast.walk(tree)
               if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]
    families = ("mnv4", "mobilenet", "nature", "impala", "rest_", "cyclemlp", "conformer", "timm")
    assert not [s for s in strings if any(f in s for f in families)]
    imported = import_graph(module_files())["rlvision.registry"]
    assert not [m for m in imported if m.startswith("rlvision.backbones") or m == "rlvision.pretrained"]


def test_every_registered_name_is_a_literal_in_the_source():
    """Greppable names: each backbone name is written out once in rlvision/backbones (no f-string assembly)."""
    import rlvision

    literals = set()
    for dirpath, _, names in os.walk(os.path.join(ROOT, "rlvision", "backbones")):
        for file in names:
            if file.endswith(".py"):
                with open(os.path.join(dirpath, file)) as f:
                    literals |= {node.value for node in ast.walk(ast.parse(f.read()))
                                 if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert not [name for name in rlvision.list_backbones() if name not in literals]


def test_renamed_modules_keep_their_old_import_paths():
    """inference.py -> inference_copy.py and ppo.py -> graphed_ppo.py (names that say the job): code that imported
    the old paths gets the same objects."""
    import rlvision.graphed_ppo
    import rlvision.inference
    import rlvision.inference_copy
    import rlvision.ppo

    assert rlvision.inference.InferenceCopy is rlvision.inference_copy.InferenceCopy
    assert rlvision.inference.foldable_pairs is rlvision.inference_copy.foldable_pairs
    assert rlvision.ppo.GraphedPPO is rlvision.graphed_ppo.GraphedPPO


def test_every_subpackage_is_listed_for_installation():
    """pyproject.toml lists packages explicitly: a folder with an __init__.py missing from the list would be left
    out of a wheel (an editable install still finds it, so only a real install would show it)."""
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = {name for name, path in module_files().items() if path.endswith("__init__.py")}
    assert found == listed, f"missing from pyproject.toml: {sorted(found - listed)}; absent: {sorted(listed - found)}"
