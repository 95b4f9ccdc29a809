"""The package's shape: packages import only from those before them on the data's path, module
and function sizes stay within the house limits, matplotlib is imported in one module, and the
library reports through its logger, never print."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "skin_keras"
# The order of the data's path (skin_keras/__init__.py): each may import from those before it.
LAYERS = ("core", "data", "model", "train", "infer", "evaluate", "export", "serve",
          "workflows")
ENTRY_POINTS = ("prepare_isic", "calibrate", "ood_images", "merge_predictions")  # python -m skin_keras.<name>
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 350, 80
# A function longer than this says why in a comment starting with "# Long:".
EXPLAINED_FUNCTION_LINES = 60


def modules():
    return sorted(path for path in PACKAGE.rglob("*.py"))


def dotted(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def rank(module: str) -> int:
    """Where a module stands on the path: its package's place; the entry points and the
    package's own __init__ (the Python API's front: UserError and `load`) after everything."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ENTRY_POINTS:
        return len(LAYERS)
    return LAYERS.index(parts[1])


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every skin_keras import in the file, wherever it is."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("skin_keras"):
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found += [(node.lineno, node.module if node.module.count(".") >= 1 else name)
                      for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names
                      if alias.name.startswith("skin_keras")]
    return found


def test_every_module_belongs_to_a_layer():
    for path in modules():
        module = dotted(path)
        assert module == "skin_keras" or module.split(".")[1] in LAYERS + ENTRY_POINTS, module


def test_no_module_imports_from_a_layer_after_its_own():
    upward = [f"{dotted(path)}:{line} imports {target}" for path in modules()
              for line, target in imports(path) if rank(target) > rank(dotted(path))]
    assert upward == []


def test_the_layering_test_catches_an_upward_import(tmp_path):
    module = tmp_path / "upward.py"
    module.write_text("from skin_keras.train import loop\n")
    assert [rank(target) for _, target in imports(module)] == [LAYERS.index("train")]
    assert rank("skin_keras.model.builder") < LAYERS.index("train")


def test_modules_and_functions_stay_within_the_house_limits():
    over = []
    for path in modules():
        source = path.read_text()
        if source.count("\n") > MAX_MODULE_LINES:
            over.append(f"{dotted(path)}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    over.append(f"{dotted(path)}.{node.name}: {length} lines")
                body = source.splitlines()[node.lineno - 1:node.end_lineno]
                if length > EXPLAINED_FUNCTION_LINES and not any(
                        line.strip().startswith("# Long:") for line in body):
                    over.append(f"{dotted(path)}.{node.name}: {length} lines and no "
                                "'# Long:' comment saying why")
    assert over == []


@pytest.mark.parametrize("library, allowed", [
    # ood_images only reads the sample photo matplotlib ships.
    ("matplotlib", ("skin_keras.core.plots", "skin_keras.data.ood_synthesis")),
    ("sklearn", ("skin_keras.evaluate.", "skin_keras.data.splits", "skin_keras.data.ood_synthesis")),
])
def test_heavy_libraries_are_imported_where_they_are_used_only(library, allowed):
    users = set()
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == library for name in names):
                users.add(dotted(path))
    assert users and all(user.startswith(allowed) for user in users), users


def test_the_library_logs_and_never_prints():
    printing = []
    for path in modules():
        if dotted(path).split(".")[-1] in ENTRY_POINTS:
            continue  # Scripts print their result.
        tree = ast.parse(path.read_text())
        main_blocks = [node for node in tree.body if isinstance(node, ast.If)
                       and "__main__" in ast.unparse(node.test)]
        skip = {id(inner) for block in main_blocks for inner in ast.walk(block)}
        printing += [f"{dotted(path)}:{node.lineno}" for node in ast.walk(tree)
                     if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "print"
                     and id(node) not in skip]
    assert printing == []


def test_inference_imports_no_training_code():
    """Loading and running a model needs the run folder's file names (core/layout.py), never
    the training package."""
    found = [f"{dotted(path)}:{line} imports {target}"
             for path in sorted((PACKAGE / "infer").rglob("*.py"))
             for line, target in imports(path) if target.startswith("skin_keras.train")]
    assert found == [], "\n".join(found)
