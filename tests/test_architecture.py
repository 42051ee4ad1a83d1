"""The dependency direction and import-cost rules of the design, checked on the source."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "ctrlpost"
PLUGINS = [REPO / "plugins" / "edge" / "src", REPO / "plugins" / "blur" / "src"]


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


SOURCES = {module_name(p, SRC.parent): p for p in SRC.rglob("*.py")}


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if within(m, "ctrlpost.models")
                                          or within(m, "ctrlpost.diffusion")))
def test_models_and_diffusion_stay_pure(module: str) -> None:
    forbidden = ["torch.distributed", "ctrlpost.recipe", "ctrlpost.data", "ctrlpost.weights",
                 "ctrlpost.engine", "ctrlpost.cli", "ctrlpost.preflight", "ctrlpost.inspect.report"]
    if within(module, "ctrlpost.diffusion"):
        forbidden.append("ctrlpost.models")
    bad = [name for name in imports(SOURCES[module]) if any(within(name, f) for f in forbidden)]
    assert bad == [], f"{module} imports {bad}"


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_torch_distributed_only_in_engine(module: str) -> None:
    if within(module, "ctrlpost.engine"):
        return
    bad = [n for n in imports(SOURCES[module]) if within(n, "torch.distributed")]
    assert bad == [], f"{module} imports {bad}"


# Completion runs the program on every TAB: these must not pay for torch (~2 s) at import.
LIGHT_MODULES = {"ctrlpost", "ctrlpost.__main__", "ctrlpost.cli", "ctrlpost.errors",
                 "ctrlpost.recipe", "ctrlpost.preflight", "ctrlpost.engine.memory"}
LIGHT_PACKAGES = ("ctrlpost.modalities", "ctrlpost.weights")


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
