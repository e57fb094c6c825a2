"""The layers of the code as a rule on imports: every import in pipeline/, exporters/ and validators/ goes down.

    top         pipeline.stages, .recipe, .presets, .workflow, .cli      may import anything
    deployment  exporters, validators                                    the bottom, compress, themselves
    compress    pipeline.compress                                        the bottom, itself
    bottom      pipeline (the package root), pipeline.errors, .paths,    the bottom only
                .targets, .measures, .models, .data, .artifacts

exporters and validators import each other only through a declared shared interface,
`SHARED_INTERFACES`: today one module, `exporters.onnx_io` (the input/output names of an
exported graph and io.json), which validators.ort_runner needs to feed the graph. Nothing in
exporters imports validators: the export stage composes an export with the ONNX Runtime check,
and exporters.parity takes any runner through the protocol in pipeline.measures.runners (bottom).

The package root `pipeline/__init__.py` is bottom, not top: Python runs it before any
`pipeline.*` module, so every layer imports it whether it says so or not (validators and
pipeline.artifacts also name it). It registers the sculpted model with transformers and imports
only pipeline.models.

Inside the bottom, packages may import each other while that makes no cycle. What they import
today: models -> errors, paths; data -> errors; measures -> data, errors; artifacts -> errors,
paths, the package root (its version); the package root -> models. errors, paths and targets
import nothing from the project. `test_the_bottom_packages_import_each_other_without_a_cycle`
keeps it so.

Imports inside functions count, relative imports are resolved, `from package import name`
counts as importing the submodule when `name` is one. Imports made with importlib by name
(validators.backends opens runners that way, inside validators) are not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests import REPO_ROOT

REPO = REPO_ROOT
ROOTS = ("pipeline", "exporters", "validators")

BOTTOM, COMPRESS, EXPORTERS, VALIDATORS, TOP = "bottom", "compress", "exporters", "validators", "top"
LAYERS = {  # module prefix -> layer; the longest prefix decides; "pipeline" alone is the package root only
    "pipeline": BOTTOM,
    "pipeline.errors": BOTTOM,
    "pipeline.paths": BOTTOM,
    "pipeline.targets": BOTTOM,
    "pipeline.measures": BOTTOM,
    "pipeline.models": BOTTOM,
    "pipeline.data": BOTTOM,
    "pipeline.artifacts": BOTTOM,
    "pipeline.compress": COMPRESS,
    "exporters": EXPORTERS,
    "validators": VALIDATORS,
    "pipeline.stages": TOP,
    "pipeline.recipe": TOP,
    "pipeline.presets": TOP,  # the recipes `sculpt run` offers by name: part of the recipe
    "pipeline.workflow": TOP,
    "pipeline.cli": TOP,
}
MAY_IMPORT = {
    BOTTOM: {BOTTOM},
    COMPRESS: {BOTTOM, COMPRESS},
    EXPORTERS: {BOTTOM, COMPRESS, EXPORTERS},
    VALIDATORS: {BOTTOM, COMPRESS, VALIDATORS},
    TOP: {BOTTOM, COMPRESS, EXPORTERS, VALIDATORS, TOP},
}
# module -> the layers that may import it besides those MAY_IMPORT allows. Such a module (and its package's
# __init__, which Python runs first) may itself import only the bottom, so it brings nothing else along.
SHARED_INTERFACES = {
    "exporters.onnx_io": {VALIDATORS},  # the exported graph's input/output names and io.json
}
# Edges inside pipeline/compress that break the rules and are still to be fixed there, as
# "importer -> imported". Empty: compress imports only the bottom and itself. A new entry needs a
# reason; an entry whose edge is gone fails the test, so the list only shrinks.
COMPRESS_ALLOWED: set[str] = set()


def modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Every module under `root`'s ROOTS: dotted name -> (file, whether it is a package's __init__)."""
    found = {}
    for top in ROOTS:
        for path in sorted((root / top).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def imports(name: str, path: Path, package: bool, known) -> set[str]:
    """The project modules `name` imports anywhere in its file (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package, one package up per extra dot
                parts = name.split(".") if package else name.split(".")[:-1]
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t.split(".")[0] in ROOTS)
    return found


def layer_of(name: str) -> str | None:
    if name == "pipeline":
        return LAYERS["pipeline"]
    matches = [prefix for prefix in LAYERS if prefix != "pipeline" and (name == prefix or name.startswith(prefix + "."))]
    return LAYERS[max(matches, key=len)] if matches else None


def import_graph(root: Path) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports(name, path, package, known) for name, (path, package) in known.items()}


def check(root: Path, allowed: set[str] = frozenset()) -> list[str]:
    """Every import under `root` that breaks the layers, as "importer -> imported" (sorted), and every module
    that is in no layer. Edges in `allowed` are not reported."""
    graph = import_graph(root)
    problems = {f"{name}: in no layer (add it to LAYERS)" for name in graph if layer_of(name) is None}
    interface_parts = {interface.rsplit(".", 1)[0] for interface in SHARED_INTERFACES} | set(SHARED_INTERFACES)
    for name, targets in graph.items():
        source = layer_of(name)
        for target in targets:
            layer = layer_of(target)
            if source is None or layer is None:
                continue
            ok = layer in MAY_IMPORT[source] or source in SHARED_INTERFACES.get(target, ())
            if name in interface_parts and layer != BOTTOM:
                ok = False  # a shared interface brings nothing but itself (and the bottom) along
            if not ok and f"{name} -> {target}" not in allowed:
                problems.add(f"{name} -> {target}")
    return sorted(problems)


def test_every_import_goes_down_the_layers():
    problems = check(REPO, COMPRESS_ALLOWED)
    assert not problems, "imports that break the layers (see this file's docstring):\n" + "\n".join(problems)


def test_the_compress_allow_list_names_only_edges_that_still_exist():
    graph = import_graph(REPO)
    edges = {f"{name} -> {target}" for name, targets in graph.items() for target in targets}
    assert COMPRESS_ALLOWED <= edges, f"fixed, remove from COMPRESS_ALLOWED: {sorted(COMPRESS_ALLOWED - edges)}"
    assert all(edge.startswith("pipeline.compress.") for edge in COMPRESS_ALLOWED)


def test_the_bottom_packages_import_each_other_without_a_cycle():
    def unit(name: str) -> str:  # pipeline.models.spec -> pipeline.models; the package root stays itself
        return ".".join(name.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for name, targets in import_graph(REPO).items():
        if layer_of(name) == BOTTOM:
            graph.setdefault(unit(name), set()).update(unit(t) for t in targets if unit(t) != unit(name))

    def cycle_from(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        for target in sorted(graph.get(node, ())):
            found = cycle_from(target, path + [node])
            if found:
                return found
        return None

    for start in sorted(graph):
        cycle = cycle_from(start, [])
        assert cycle is None, "bottom packages import each other in a cycle: " + " -> ".join(cycle)


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def synthetic_tree(root: Path, extra: dict[str, str]) -> None:
    """A minimal tree where every import goes down, plus `extra` files."""
    write(root, {
        "pipeline/__init__.py": "from .models import spec\n",
        "pipeline/errors.py": "",
        "pipeline/models/__init__.py": "",
        "pipeline/models/spec.py": "from ..errors import SculptError\n",
        "pipeline/compress/__init__.py": "from . import width\n",
        "pipeline/compress/width.py": "from pipeline.models.spec import ArchSpec\n",
        "pipeline/stages/__init__.py": "from validators import gates\nfrom exporters import onnx_io\n",
        "exporters/__init__.py": "",
        "exporters/onnx_io.py": "from pipeline.errors import SculptError\n",
        "exporters/trt_lint.py": "from .onnx_io import LOGITS\n",
        "validators/__init__.py": "",
        "validators/gates.py": "from exporters.onnx_io import GraphIO\nfrom pipeline.compress import width\n",
        **extra,
    })


def test_the_checker_passes_a_tree_that_keeps_the_rules(tmp_path):
    synthetic_tree(tmp_path, {})
    assert check(tmp_path) == []


def test_the_checker_reports_a_compress_module_importing_a_validator(tmp_path):
    synthetic_tree(tmp_path, {"pipeline/compress/x.py": "import torch\n\nfrom validators.gates import parse_size\n"})
    assert check(tmp_path) == ["pipeline.compress.x -> validators.gates"]


def test_the_checker_sees_relative_imports_imports_in_functions_and_unknown_modules(tmp_path):
    synthetic_tree(tmp_path, {
        "pipeline/models/y.py": "def f():\n    from ..stages import build\n",
        "pipeline/models/z.py": "from . import spec\nfrom .. import compress\n",
        "exporters/w.py": "def g():\n    import validators.gates\n",
        "validators/v.py": "from exporters import trt_lint\n",
        "exporters/onnx_io.py": "from .trt_lint import LOGITS\n",  # a shared interface importing more than the bottom
        "pipeline/extra.py": "",
    })
    assert check(tmp_path) == [
        "exporters.onnx_io -> exporters.trt_lint",
        "exporters.w -> validators.gates",
        "pipeline.extra: in no layer (add it to LAYERS)",
        "pipeline.models.y -> pipeline.stages",
        "pipeline.models.z -> pipeline.compress",
        "validators.v -> exporters.trt_lint",
    ]
    allowed = check(tmp_path, {"pipeline.models.z -> pipeline.compress"})
    assert len(allowed) == 5 and "pipeline.models.z -> pipeline.compress" not in allowed
