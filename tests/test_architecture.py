"""The architecture's rules, checked on the source: no import cycle (lazy imports included), the
dependency direction, the recipe read whole only where the job is composed, light modules for
the CLI, plugins on the public API, module length."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "ctrlpost"
PLUGINS = [REPO / "plugins" / name / "src"
           for name in ("edge", "blur", "depth", "seg", "keypoint", "upscale")]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, *, top_level_only: bool = False) -> Iterator[str]:
    """Absolute names imported by a file (module-level statements only if asked)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.If | ast.Try) and top_level_only:
            # `if TYPE_CHECKING:` blocks never run; other module-level branches do.
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for child in ast.walk(node):
                if isinstance(child, ast.Import):
                    yield from (alias.name for alias in child.names)
                elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                    yield child.module


def sources(root: Path) -> dict[str, Path]:
    return {module_name(p, root.parent): p for p in root.rglob("*.py")}


SOURCES = sources(SRC)


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def runtime_imports(path: Path) -> Iterator[str]:
    """Names imported when the code runs, lazily or not (``if TYPE_CHECKING:`` blocks skipped)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(child) for node in ast.walk(tree) if isinstance(node, ast.If)
               and "TYPE_CHECKING" in ast.unparse(node.test) for child in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of the same tree it imports (``from pkg import name`` counts as an
    import of ``pkg.name`` when that is a module, else of ``pkg``)."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for name in runtime_imports(path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    # `from ctrlpost.x import y` yields both `ctrlpost.x` and `ctrlpost.x.y`: keep the precise one.
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not any(o != t and within(o, t) for o in targets)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
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


def test_no_import_cycle_in_src() -> None:
    assert cycles(import_graph(SOURCES)) == []


def test_a_planted_lazy_cycle_is_found(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import helper\n")
    (package / "b.py").write_text("def helper():\n    from pkg import a  # lazy\n    return a\n")
    (package / "c.py").write_text("import pkg.a\n")
    assert cycles(import_graph(sources(package))) == [["pkg.a", "pkg.b"]]


# Each package and the parts of ctrlpost it must never import (the arrows run one way; see
# docs/architecture.md). `models/` and `diffusion/` are pure: they take plain dataclasses and
# tensors; `weights/` may use `models/` to build the tiny flavor's weights.
LOWER_THAN = {
    "ctrlpost.errors": ["ctrlpost"],
    "ctrlpost.files": ["ctrlpost"],
    "ctrlpost.rundir": ["ctrlpost"],
    "ctrlpost.processes": ["ctrlpost"],
    "ctrlpost.tokenizer_geometry": ["ctrlpost"],
    "ctrlpost.modalities": ["ctrlpost.recipe", "ctrlpost.models", "ctrlpost.diffusion",
                            "ctrlpost.data", "ctrlpost.weights", "ctrlpost.embed",
                            "ctrlpost.engine", "ctrlpost.inspect", "ctrlpost.preflight",
                            "ctrlpost.cli"],
    "ctrlpost.recipe": ["ctrlpost.models", "ctrlpost.diffusion", "ctrlpost.data",
                        "ctrlpost.weights", "ctrlpost.embed", "ctrlpost.engine",
                        "ctrlpost.inspect", "ctrlpost.preflight", "ctrlpost.cli"],
    "ctrlpost.models": ["ctrlpost.recipe", "ctrlpost.data", "ctrlpost.weights", "ctrlpost.embed",
                        "ctrlpost.engine", "ctrlpost.inspect", "ctrlpost.preflight",
                        "ctrlpost.cli", "torch.distributed"],
    "ctrlpost.diffusion": ["ctrlpost.models", "ctrlpost.recipe", "ctrlpost.data",
                           "ctrlpost.weights", "ctrlpost.embed", "ctrlpost.engine",
                           "ctrlpost.inspect", "ctrlpost.preflight", "ctrlpost.cli",
                           "torch.distributed"],
    "ctrlpost.weights": ["ctrlpost.data", "ctrlpost.embed", "ctrlpost.engine",
                         "ctrlpost.inspect", "ctrlpost.preflight", "ctrlpost.cli"],
    "ctrlpost.data": ["ctrlpost.weights", "ctrlpost.embed", "ctrlpost.engine",
                      "ctrlpost.inspect", "ctrlpost.preflight", "ctrlpost.cli"],
    "ctrlpost.embed": ["ctrlpost.engine", "ctrlpost.inspect", "ctrlpost.preflight",
                       "ctrlpost.cli"],
    "ctrlpost.inspect": ["ctrlpost.preflight", "ctrlpost.cli"],
    "ctrlpost.engine": ["ctrlpost.inspect", "ctrlpost.preflight", "ctrlpost.cli"],
    "ctrlpost.preflight": ["ctrlpost.cli"],
}


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_dependencies_point_one_way(module: str) -> None:
    rules = [(package, forbidden) for package, forbidden in LOWER_THAN.items()
             if within(module, package)]
    bad = sorted({name for name in runtime_imports(SOURCES[module]) for package, forbidden in rules
                  for f in forbidden if within(name, f) and not within(name, package)})
    assert bad == [], f"{module} imports {bad}"


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_torch_distributed_only_in_engine(module: str) -> None:
    if within(module, "ctrlpost.engine"):
        return
    bad = [n for n in imports(SOURCES[module]) if within(n, "torch.distributed")]
    assert bad == [], f"{module} imports {bad}"


# The job is composed in one place: only these take the whole recipe as a parameter (besides
# the recipe's own module, which defines and serialises it); everything else receives its own
# typed section.
WHOLE_RECIPE_READERS = {"ctrlpost.engine.build", "ctrlpost.preflight", "ctrlpost.recipe"}


def recipe_parameters(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args
            for arg in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
                annotation = ast.unparse(arg.annotation) if arg.annotation else ""
                if annotation.strip("'\"").split(".")[-1].removesuffix(" | None") == "Recipe":
                    found.append(f"{node.name}({arg.arg})")
    return found


@pytest.mark.parametrize("module", sorted(set(SOURCES) - WHOLE_RECIPE_READERS))
def test_only_the_job_composer_and_preflight_take_the_whole_recipe(module: str) -> None:
    assert recipe_parameters(SOURCES[module]) == []


def test_the_whole_recipe_rule_sees_a_parameter(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text("def f(recipe: Recipe, n: int) -> None: ...\n"
                    "def g(*, r: 'Recipe | None') -> None: ...\n")
    assert recipe_parameters(path) == ["f(recipe)", "g(r)"]


# Completion runs the program on every TAB: these must not pay for torch (~2 s) at import.
LIGHT_MODULES = {"ctrlpost", "ctrlpost.__main__", "ctrlpost.errors", "ctrlpost.recipe",
                 "ctrlpost.preflight", "ctrlpost.engine.memory", "ctrlpost.files",
                 "ctrlpost.rundir", "ctrlpost.processes", "ctrlpost.tokenizer_geometry"}
LIGHT_PACKAGES = ("ctrlpost.cli", "ctrlpost.modalities", "ctrlpost.weights", "ctrlpost.data.fetch")


def is_light(module: str) -> bool:
    return module in LIGHT_MODULES or any(within(module, p) for p in LIGHT_PACKAGES)


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if is_light(m)))
def test_light_modules_do_not_import_torch_at_import(module: str) -> None:
    heavy = {"torch", "transformers", "cv2", "einops"}
    bad = [n for n in imports(SOURCES[module], top_level_only=True) if n.split(".")[0] in heavy]
    assert bad == [], f"{module} imports {bad} at module level"


@pytest.mark.parametrize("path", sorted(p for root in PLUGINS for p in root.rglob("*.py")),
                         ids=lambda p: p.name)
def test_plugins_use_only_the_public_plugin_api(path: Path) -> None:
    bad = [n for n in imports(path) if within(n, "ctrlpost")
           and not within(n, "ctrlpost.modalities")]
    assert bad == [], f"{path} imports {bad}"
    heavy = [n for n in imports(path, top_level_only=True) if n.split(".")[0] == "torch"]
    assert heavy == [], f"{path} imports torch at module level"


def test_no_module_is_too_long() -> None:
    lengths = {m: len(p.read_text().splitlines()) for m, p in SOURCES.items()}
    too_long = {m: n for m, n in lengths.items() if n > 600}
    assert too_long == {}
