"""Layers point down: each module of purify_lib imports only its own layer and the ones above it, in the
README's order (data -> attacks/models -> training -> zoo -> defenses -> defend -> notebooks' helpers)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "purify_lib"
LAYERS = [
    {"paths", "files", "errors", "seeds", "precision", "provenance", "cli"},
    {"datasets", "data"},
    {"attacks"},
    {"models"},
    {"train", "metrics"},
    {"profiles"},
    {"zoo"},
    {"defenses"},
    {"defend"},
    {"interop"},
    {"section", "sweep", "claims", "analysis", "plots", "paper_tables"},
    {"execution", "status"},
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def imported(path: Path) -> set[str]:
    """The purify_lib top-level modules ``path`` imports, at module level or inside functions."""
    package = list(path.relative_to(PACKAGE).parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            found |= {target[0]} if target else {alias.name for alias in node.names}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [alias.name for alias in node.names]
            found |= {name.split(".")[1] for name in names if name and name.startswith("purify_lib.")}
    return found


def test_every_module_has_a_layer_and_imports_only_downwards():
    for path in sorted(PACKAGE.rglob("*.py")):
        top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if top == "__init__":
            continue
        assert top in LEVEL, f"{top} is in no layer: add it to the README's table and to LAYERS"
        upward = sorted(name for name in imported(path) - {top} if LEVEL.get(name, -1) > LEVEL[top])
        assert not upward, f"{path.relative_to(PACKAGE)} ({top}) imports the higher layer(s) {', '.join(upward)}"
