"""The import structure: no import cycle anywhere (type-only imports included), the option
vocabulary a leaf, and every module importable first, in an interpreter that has imported nothing
of ours before it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

from scripts import REPO
from vitscope.methods import MODULES

CLIENT = REPO / "client"  # the client's package lives in client/vitscope_client (installed: top level)
PACKAGES = {  # first-party package -> the folder it is imported from
    "vitscope": REPO,
    "kserve_engine": REPO,
    "handler": REPO,
    "testkit": REPO,
    "scripts": REPO,
    "bench": REPO,
    "vitscope_client": CLIENT,
}
# Third-party libraries the fresh interpreter imports before forking one child per module: what
# makes an import slow (torch; torch._dynamo, ~1.4 s, which bench.compiled and bench.cli both import),
# none of ours.
PRELOAD = (
    *("torch", "torch._dynamo.utils", "torch._inductor.config"),
    *("numpy", "PIL.Image", "orjson", "yaml", "matplotlib.pyplot", "requests"),
)


def first_party_files() -> Iterator[tuple[str, Path]]:
    """(module name, file) of every first-party module."""
    for package, root in PACKAGES.items():
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if "__pycache__" not in parts:
                yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


MODULE_FILES = dict(first_party_files())


def imported_modules(name: str, path: Path) -> set[str]:
    """The first-party modules ``name`` imports anywhere in its file (at run time or under
    TYPE_CHECKING, at module level or inside functions): each ``from X import y`` is an edge to
    ``X.y`` when that is a module, else to ``X``."""
    is_package = path.name == "__init__.py"
    edges: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULE_FILES else source for alias in node.names]
        for target in targets:
            while target and target not in MODULE_FILES:  # import a.b.c: the deepest first-party module named
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
    if name == "vitscope.methods":  # the registry imports its method modules by name
        edges |= {f"vitscope.methods.{module}" for module in MODULES}
    return edges


def import_graph() -> dict[str, set[str]]:
    return {name: imported_modules(name, path) for name, path in MODULE_FILES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_walk_sees_the_imports() -> None:
    graph = import_graph()
    assert "vitscope.vocab" in graph["vitscope.options"] and "vitscope.methods" in graph["vitscope.options"]
    assert "vitscope.methods.pca" in graph["vitscope.methods"]  # the registry's modules, named as strings
    assert "vitscope.model.vit" in graph["vitscope.methods.base"]  # a TYPE_CHECKING import counts
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_the_option_vocabulary_is_a_leaf() -> None:
    """vocab.py imports nothing of the package but the errors (a leaf itself): any module, a method
    a user adds included, may import it."""
    graph = import_graph()
    assert graph["vitscope.vocab"] <= {"vitscope.errors"} and graph["vitscope.errors"] == set()
    methods = [name for name in graph if name.startswith("vitscope.methods.")]
    assert methods and all("vitscope.options" not in graph[name] for name in methods)


def test_the_core_imports_no_model_server() -> None:
    """vitscope is the engine-agnostic core: neither TorchServe, KServe nor the adapters."""
    servers = ("ts", "kserve", "kserve_engine", "handler", "fastapi", "testkit", "bench", "scripts")
    for name, path in MODULE_FILES.items():
        if name.startswith("vitscope."):
            tree = ast.parse(path.read_text())
            roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
            roots |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level}
            assert not roots & set(servers), (name, roots & set(servers))


FRESH_IMPORTS = textwrap.dedent(
    """
    import importlib, json, os, sys, traceback
    for library in sys.argv[2].split(","):
        importlib.import_module(library)
    assert not any(m.split(".")[0] in sys.argv[3].split(",") for m in sys.modules), "ours before the fork"
    results = {}
    for name in sys.argv[1].split(","):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: this module is the first of ours it imports
            os.close(read)
            try:
                importlib.import_module(name)
                message = ""
            except BaseException:
                message = traceback.format_exc()
            os.write(write, message.encode())
            os._exit(0)
        os.close(write)
        chunks = []
        while chunk := os.read(read, 65536):
            chunks.append(chunk)
        os.waitpid(pid, 0)
        results[name] = b"".join(chunks).decode()
    print(json.dumps(results))
    """
)


def importable_modules() -> list[str]:
    skip = {name for name in MODULE_FILES if name.endswith("__main__")}  # running them is their import
    return sorted(set(MODULE_FILES) - skip)


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    """One forked child per module, of a fresh interpreter that has imported only third-party
    libraries (so the children are fast): in each, that module is the first of ours imported. An
    import cycle that only bites in some order (a method importing options.py) fails here."""
    names = importable_modules()
    path = [str(CLIENT), str(REPO), *sys.path]
    env = {"PYTHONPATH": ":".join(path), "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-c", FRESH_IMPORTS, ",".join(names), ",".join(PRELOAD), ",".join(PACKAGES)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    failures = {name: error for name, error in json.loads(run.stdout.splitlines()[-1]).items() if error}
    assert set(json.loads(run.stdout.splitlines()[-1])) == set(names)
    assert not failures, "\n".join(f"{name}:\n{error}" for name, error in failures.items())
