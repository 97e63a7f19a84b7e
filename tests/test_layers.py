"""kq's layers (docs/ARCHITECTURE.md) hold: no module imports from a layer above its own.

Every import counts, those inside functions (kq imports heavy things lazily) and under
TYPE_CHECKING included: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

KQ = pathlib.Path(__file__).resolve().parent.parent / "kq"

# Bottom-up, as docs/ARCHITECTURE.md draws them. A module belongs to the layer of its
# longest matching prefix; `kq` itself (the package: its version, its lazy names) is below all.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "kq.errors",
            "kq.lazy_exports",
            "kq.units",
            "kq.offsetspec",
            "kq.delivery_time",
            "kq.envelope",
            "kq.envelope_encode",
        ),
    ),
    ("engine", ("kq.engine",)),
    ("clients", ("kq.producer", "kq.consumer", "kq.runner", "kq.formats")),
    ("groups", ("kq.groups",)),
    ("share", ("kq.share",)),
    ("backends", ("kq.backends",)),
    ("ops", ("kq.ops",)),
    ("serve", ("kq.serve",)),
    ("testing", ("kq.testing",)),
    ("cli", ("kq.cli", "kq.__main__")),
]


def layer_of(module: str) -> int | None:
    """The layer's place (0 at the bottom) of a kq module, -1 for the package itself, None if it has none."""
    if module == "kq":
        return -1
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for level, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), level)
    return None if best is None else best[1]


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(KQ.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(module: str, source: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every kq module ``source`` imports (relative imports resolved;
    ``from X import name`` counts as X.name when that is a module, else X)."""
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name == "kq" or a.name.startswith("kq.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target != "kq" and not target.startswith("kq."):
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                as_path = KQ.parent / candidate.replace(".", "/")
                is_module = as_path.with_suffix(".py").exists() or (as_path / "__init__.py").exists()
                out.append((node.lineno, candidate if is_module else target))
    return out


def upward_imports(module: str, source: str, is_package: bool = False) -> list[str]:
    """What ``module`` imports from a layer above its own, one line each."""
    own = layer_of(module)
    assert own is not None, f"{module} is in no layer: add it to LAYERS (and to docs/ARCHITECTURE.md)"
    found = []
    for line, imported in imported_modules(module, source, is_package):
        theirs = layer_of(imported)
        if theirs is not None and theirs > own:
            found.append(f"{module}:{line} imports {imported} ({LAYERS[theirs][0]}, above {module}'s {LAYERS[own][0]})")
    return found


MODULES = sorted(KQ.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(KQ.parent)))
def test_no_module_imports_from_a_layer_above_its_own(path):
    module = module_name(path)
    if module == "kq":
        return  # the package's lazy names reach every layer by design (import_module, not import)
    assert upward_imports(module, path.read_text(encoding="utf-8"), path.name == "__init__.py") == []


def test_every_module_is_in_a_layer():
    assert [module_name(p) for p in MODULES if layer_of(module_name(p)) is None] == []


def test_an_upward_import_is_found():
    """The check itself: the engine reaching for share groups, lazily, is caught; the reverse is not."""
    lazy = "def f():\n    from ..share.consumer import ShareConsumer\n"
    assert upward_imports("kq.engine.topic", lazy) == [
        "kq.engine.topic:2 imports kq.share.consumer (share, above kq.engine.topic's engine)"
    ]
    assert upward_imports("kq.share.consumer", "from ..engine.topic import Topic\n") == []
    assert upward_imports("kq.backends.local", "import kq.cli.app\n") != []
