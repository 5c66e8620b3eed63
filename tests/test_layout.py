"""The layout's rules, checked (README, Layout):

- pure cores import no I/O framework (in a fresh interpreter, so what the rest of the test
  session imported does not count), and no module that is not a pure core or the kit;
- ``monitoring`` imports no domain;
- imports point one way: no two packages import each other, however indirectly;
- only the composition root knows every domain: nothing imports it, the kit imports no domain;
- no module runs past 500 lines, but declarative tables (the settings).

Packages are counted as they are read: each folder of ``service/`` is one package, the modules
directly in ``service/`` are the kit, ``service.main``, ``service.health``, the CLI root and
``service.__main__`` are the composition root, ``rollout.core`` is apart from the rest of
``rollout``, and each pure core module counts on its own (a domain may keep a pure rule that
another domain imports without depending on the first's I/O).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PURE = [
    "rollout.core.agreement", "rollout.core.figures", "rollout.core.gates",
    "rollout.core.machine", "rollout.core.spec", "rollout.core.split",
    "rollout.core.sequential", "rollout.core.verdicts", "rollout.core.wording",
    "rollout.core.drift_gate", "rollout.core.evaluation_gate",
    "service.guard.answers", "service.guard.confidence", "service.guard.fields",
    "service.guard.policy", "service.guard.route_guard", "service.guard.schema",
    "service.guard.patterns", "service.guard.expansion", "service.guard.refused",
    "service.guard.picks",
    "service.gateway.request_rules", "service.routes.view", "service.keys.lookups",
    "adapters.placement", "service.engine.affinity", "service.drift.statistics",
    "service.guard.output_fields",
    "service.drift.features", "service.audit.chain", "service.review.callback_urls",
    "service.drift.slo", "service.drift.minimums", "service.routes.monitoring",
    "service.guard.tiers", "service.guard.sampling", "service.review.model",
    "service.limits.quota", "service.keys.credentials", "service.guard",
    "service.review.visibility", "service.review.agreement", "service.review.calibration",
    "service.gateway.tool_rules", "service.gateway.openai_shape", "service.guard.tool_calls",
    "service.evaluation.cases", "service.evaluation.leakage", "service.guard.prompts",
    "service.evaluation.scoring", "service.evaluation.summary",
]  # fmt: skip
IMPURE = ("sqlalchemy", "fastapi", "starlette", "aiohttp", "httpx")
DOMAINS = ("service", "adapters", "rollout")
TOPS = (*DOMAINS, "monitoring")
COMPOSITION_ROOT = {"service.main", "service.health", "service.cli.app", "service.__main__"}
KIT = "service (kit)"
MAX_MODULE_LINES = 500
# Declarative tables may run longer: every setting with its description.
LONG_TABLES = {"service/settings.py"}
ROOT_NODE = "composition root"


def test_pure_cores_import_no_database_web_or_http_client_library() -> None:
    probe = (
        "import importlib, sys\n"
        f"for name in {PURE!r}: importlib.import_module(name)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({IMPURE!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_monitoring_depends_on_no_domain_package() -> None:
    files = sorted((ROOT / "monitoring").glob("*.py"))
    assert files
    offending = {
        f"{path.name}: {name}"
        for path in files
        for name in _imported(path)
        if name.split(".")[0] in DOMAINS
    }
    assert not offending


def _module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str) -> str:
    """The module an import names (``from a.b import c`` may name a module or an attribute)."""
    parts = name.split(".")
    while len(parts) > 1:
        where = ROOT.joinpath(*parts)
        if where.is_dir() or where.with_suffix(".py").exists():
            break
        parts.pop()
    return ".".join(parts)


def _node(module: str) -> str:
    """The package a module counts in (see the module docstring)."""
    if module in COMPOSITION_ROOT:
        return ROOT_NODE
    if module in PURE:
        return module
    parts = module.split(".")
    if parts[0] in ("service", "rollout") and len(parts) > 1:
        if ROOT.joinpath(parts[0], parts[1]).is_dir():
            return f"{parts[0]}.{parts[1]}"
        if parts[0] == "service":
            return KIT
    return parts[0]


def _imports() -> dict[str, dict[str, set[str]]]:
    """node -> imported node -> the "file: module" lines that make the edge."""
    edges: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for top in TOPS:
        for path in sorted((ROOT / top).rglob("*.py")):
            source = _node(_module_of(path))
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [f"{node.module}.{alias.name}" for alias in node.names]
                for name in names:
                    if name.split(".")[0] not in TOPS:
                        continue
                    target = _node(_resolve(name))
                    if target != source:
                        edges[source][target].add(f"{path.relative_to(ROOT)}: {_resolve(name)}")
    return edges


def _cycles(edges: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = [stack.pop()]
            while component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(edges):
        if node not in index:
            visit(node)
    return found


def test_no_two_packages_import_each_other() -> None:
    edges = _imports()
    loops = [
        f"{a} -> {b}: {sorted(edges[a][b])}"
        for component in _cycles(edges)
        for a in component
        for b in component
        if b in edges[a]
    ]
    assert not loops, "packages importing each other:\n" + "\n".join(loops)


def test_only_the_composition_root_knows_every_domain() -> None:
    edges = _imports()
    into_root = {a: sorted(edges[a][ROOT_NODE]) for a in edges if ROOT_NODE in edges[a]}
    assert not into_root, into_root
    kit_imports = {b for b in edges[KIT] if b not in PURE and b != "monitoring"}
    assert not kit_imports, {b: sorted(edges[KIT][b]) for b in kit_imports}


def test_pure_cores_import_only_pure_cores_and_the_kit() -> None:
    edges = _imports()
    leaks = {
        f"{a} -> {b}": sorted(edges[a][b])
        for a in PURE
        for b in edges.get(a, {})
        if b not in PURE and b != KIT
    }
    assert not leaks, leaks


def test_the_rules_see_a_loop_when_there_is_one() -> None:
    """The checker itself: a made-up back edge is found, with the file that makes it."""
    edges = _imports()
    assert "service.gateway" in edges["composition root"]
    edges["service.gateway"]["composition root"].add("made-up: service.main")
    assert any("composition root" in component for component in _cycles(edges))


def test_modules_stay_small() -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for top in TOPS
        for path in (ROOT / top).rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert set(long) <= LONG_TABLES, long
