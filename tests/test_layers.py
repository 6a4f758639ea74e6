"""The package's layers, checked from its imports (standard library only: an AST scan, nothing imported).

Layers, lowest first; a module may import its own layer and those below it, never above:

    0 foundation   errors atomic locks cpus manifest contract cache lazy   (standard library only)
    1 data, model  dataset presets, synthetic scenes, evaluation; the PyTorch network and checkpoints
    2 runtime      torch-free inference: specs, backends, pre/post-processing, pipelines
    3 precision    FP16 / INT8 graphs, checked on the CPU
    4 build        export, precision and engine steps, manifests: the one place artifacts are made
    5 bench        lrformer-bench
    6 triton batch gst   serving, batch work and the GStreamer element, all through runtime.Segmenter
    7 cli          argument parsing

One documented door points up: the runtime may call `lrformer_deploy.build.on_demand` (the demo graph, a
.pth's temporary graph). Besides the layer order: no module imports another module's `_private` name,
and the import graph (module-level and function-level imports alike) has no circle once the door is
left out. The scan functions take a source map so that a planted violation can be shown to fail them.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lrformer_deploy"
FOUNDATION = {"errors", "atomic", "locks", "cpus", "manifest", "contract", "cache", "lazy"}
RANKS = {"data": 1, "model": 1, "runtime": 2, "precision": 3, "build": 4, "bench": 5, "triton": 6, "batch": 6,
         "gst": 6, "cli": 7}
DOOR = ("lrformer_deploy.runtime", "lrformer_deploy.build.on_demand")  # (importer package, the one target)
PUBLIC_FRONT = "lrformer_deploy"  # the package's __init__: lazy names for users, outside the layers


def read_sources(root: Path = PACKAGE) -> dict[str, tuple[str, bool]]:
    """module name -> (source, is_package) for every .py file of the package."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path.read_text(encoding="utf-8"), is_pkg)
    return out


def imports_of(module: str, source: str, is_pkg: bool, modules: set[str]) -> list[tuple[str, list[str], int]]:
    """(target module, names taken from it, line) for every import in `source`, relative ones resolved.
    `from pkg import sub` where `sub` is a module counts as an import of the submodule."""
    out = []
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            plain = []
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    out.append((sub, [], node.lineno))
                else:
                    plain.append(alias.name)
            if plain or not node.names:
                out.append((target, plain, node.lineno))
    return out


def layer(module: str) -> int | None:
    parts = module.split(".")
    if module == PUBLIC_FRONT:
        return None
    if len(parts) == 2 and parts[1] in FOUNDATION:
        return 0
    return RANKS.get(parts[1]) if len(parts) > 1 else None


def is_door(importer: str, target: str) -> bool:
    return importer.startswith(DOOR[0] + ".") and target == DOOR[1]


def violations(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """Every broken rule as one readable line (empty when the package keeps its layers)."""
    modules = set(sources)
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    found: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, (source, is_pkg) in sources.items():
        mine = layer(module)
        for target, names, line in imports_of(module, source, is_pkg, modules):
            where = f"{module}:{line}"
            ours = target == "lrformer_deploy" or target.startswith("lrformer_deploy.")
            if mine == 0 and not ours and target.split(".")[0] not in stdlib:
                found.append(f"{where}: foundation module imports {target} (standard library only)")
            if not ours:
                continue
            if mine == 0 and layer(target) not in (0, None):
                found.append(f"{where}: foundation module imports {target} (foundation only)")
            theirs = layer(target)
            if mine is not None and theirs is not None and theirs > mine and not is_door(module, target):
                found.append(f"{where}: imports {target} from a higher layer ({theirs} > {mine})")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                found.append(f"{where}: imports private name(s) {', '.join(private)} of {target}")
            if target in modules and target != module and not is_door(module, target):
                graph[module].add(target)
    found += [f"import circle: {' -> '.join(c)}" for c in circles(graph)]
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One representative cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                out.append(_cycle_in(graph, set(component)))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    start = min(component)
    path, seen = [start], {start}
    node = start
    while True:
        nxt = sorted(w for w in graph[node] if w in component)
        back = [w for w in nxt if w == start]
        if back and len(path) > 1:
            return path + [start]
        fresh = [w for w in nxt if w not in seen]
        node = fresh[0] if fresh else nxt[0]
        if node in seen:
            return path[path.index(node):] + [node]
        path.append(node)
        seen.add(node)


# ------------------------------------------------------------------------------------------------ tests
def test_every_module_has_a_layer():
    unplaced = [m for m in read_sources() if m != PUBLIC_FRONT and layer(m) is None]
    assert not unplaced, f"modules outside every layer (add them to RANKS or FOUNDATION): {unplaced}"


def test_the_package_keeps_its_layers():
    assert violations(read_sources()) == []


def test_the_door_is_the_only_upward_import_of_the_runtime():
    sources = read_sources()
    modules = set(sources)
    up = sorted({target for module, (src, pkg) in sources.items() if module.startswith("lrformer_deploy.runtime")
                 for target, _, _ in imports_of(module, src, pkg, modules)
                 if (layer(target) or 0) > 2})
    assert up == [DOOR[1]], up


PLANTED = {
    "runtime imports build": ("lrformer_deploy.runtime.spec", "from lrformer_deploy.build.pipeline import build\n",
                              "higher layer"),
    "runtime imports cli": ("lrformer_deploy.runtime.segmenter", "from lrformer_deploy.cli import common\n",
                            "higher layer"),
    "foundation imports numpy": ("lrformer_deploy.atomic", "import numpy\n", "standard library only"),
    "foundation imports the runtime": ("lrformer_deploy.manifest", "from lrformer_deploy.runtime import spec\n",
                                       "foundation only"),
    "private name": ("lrformer_deploy.cli.infer", "from lrformer_deploy.runtime.sources import _private_helper\n",
                     "private name"),
    "circle": ("lrformer_deploy.precision.macs", "from lrformer_deploy.precision import pipeline\n",
               "import circle"),
}


@pytest.mark.parametrize("case", sorted(PLANTED))
def test_a_planted_violation_fails(case):
    module, line, needle = PLANTED[case]
    sources = dict(read_sources())
    source, is_pkg = sources[module]
    sources[module] = (source + "\n\ndef _planted():\n    " + line.strip() + "\n", is_pkg)
    found = violations(sources)
    assert any(needle in v for v in found), found


def test_the_runtime_imports_without_torch():
    import subprocess

    code = ("import sys; import lrformer_deploy.runtime, lrformer_deploy.runtime.segmenter, "
            "lrformer_deploy.runtime.pipeline; assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
