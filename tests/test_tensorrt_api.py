"""Every TensorRT name our code uses exists in the real TensorRT 10.x and 11.x Python bindings.

No TensorRT here, but its binding wheels (`tensorrt-cu12-bindings`, ~1.3 MB each) hold the compiled
module whose symbol table lists every registered class, method, property and enum name (how they are
read: tests/tensorrt_names.py). The names our code uses are read from the code itself (AST of every
module that imports tensorrt), so a new call is checked without anyone updating a list here.

Rules: a name used unguarded must exist in EVERY checked version (10.x and 11.x); a name the code only
reaches through `getattr(<tensorrt object>, "NAME", default)` / `hasattr` is version-specific by design
(STRONGLY_TYPED: deprecated in 11, where strong typing is always on; TF32) and must exist in at least
one checked version, so a typo there still fails.

Wheels are read from $LRFORMER_TRT_WHEELS (default: $LRFORMER_DEPLOY_CACHE/tensorrt-bindings, else
~/.cache/lrformer-deploy/tensorrt-bindings); `.ci/run` downloads them there. Without a 10.x and an
11.x wheel the tests skip, saying how to fetch them.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import tensorrt_names as tn

REPO = Path(__file__).resolve().parents[1]
SCANNED = [REPO / "lrformer_deploy", REPO / "samples"]
FETCH = ('pip download --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 '
         '--platform manylinux_2_17_x86_64 -d "$LRFORMER_TRT_WHEELS" tensorrt-cu12-bindings==<version> '
         '(nox, the README\'s test command, fetches them: noxfile.py tensorrt_bindings)')


def wheel_dir() -> Path:
    if os.environ.get("LRFORMER_TRT_WHEELS"):
        return Path(os.environ["LRFORMER_TRT_WHEELS"])
    cache = os.environ.get("LRFORMER_DEPLOY_CACHE")
    return (Path(cache) if cache else Path.home() / ".cache" / "lrformer-deploy") / "tensorrt-bindings"


@pytest.fixture(scope="module")
def bindings() -> list[tn.Bindings]:
    folder = wheel_dir()
    wheels = sorted(folder.glob("tensorrt_cu1*_bindings-*.whl")) if folder.is_dir() else []
    found = [tn.read_wheel(w) for w in wheels]
    majors = {b.major for b in found}
    missing = [str(m) for m in (10, 11) if m not in majors]
    if missing:
        pytest.skip(f"no TensorRT {'/'.join(missing)}.x bindings wheel in {folder}: {FETCH}")
    return found


@pytest.fixture(scope="module")
def usage() -> tn.Usage:
    modules = tn.modules_importing_tensorrt(SCANNED)
    assert REPO / "lrformer_deploy" / "build" / "engine.py" in modules
    assert REPO / "lrformer_deploy" / "runtime" / "backends" / "trt.py" in modules
    found = tn.Usage()
    for path in modules:
        tn.analyse_source(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)), found)
    return found


def problems(usage: tn.Usage, bindings: list[tn.Bindings]) -> list[str]:
    out = []
    for name, where in sorted(usage.used.items()):
        absent = [b.version for b in bindings if name not in b.names]
        if absent:
            out.append(f"{name} (used unguarded at {', '.join(sorted(where))}) is missing in TensorRT {', '.join(absent)}")
    for name, where in sorted(usage.guarded.items()):
        if not any(name in b.names for b in bindings):
            out.append(f"{name} (guarded at {', '.join(sorted(where))}) exists in no checked TensorRT version")
    return out


def test_symbol_extraction_finds_known_names_and_no_string_tails(bindings):
    for b in bindings:
        for known in ("Builder", "Logger", "Runtime", "OnnxParser", "create_network", "set_tensor_address",
                      "execute_async_v3", "shape", "name", "nptype", "__version__"):
            assert known in b.names, (b.version, known)
        # Tails of merged strings that no binding registers ("Builder" lives inside "IBuilder").
        for tail in ("uilder", "tensor_address", "async_v3", "ogger"):
            assert tail not in b.names, (b.version, tail)
    # Real API differences are visible: EXPLICIT_BATCH is gone in 11, STRONGLY_TYPED is in both.
    by_major = {b.major: b for b in bindings}
    assert "EXPLICIT_BATCH" in by_major[10].names and "EXPLICIT_BATCH" not in by_major[11].names
    assert all("STRONGLY_TYPED" in b.names for b in bindings)


def test_usage_is_read_from_the_code():
    found = tn.Usage()
    for path in tn.modules_importing_tensorrt(SCANNED):
        tn.analyse_source(path.read_text(encoding="utf-8"), path.name, found)
    # One call per kind of TensorRT object the issue names, so the reader cannot silently find nothing.
    per_role = {"builder": "create_network", "network": "get_input", "config": "set_memory_pool_limit",
                "parser": "parse_from_file", "profile": "set_shape", "runtime": "deserialize_cuda_engine",
                "engine": "get_tensor_name", "context": "execute_async_v3", "module": "OnnxParser"}
    for role, name in per_role.items():
        assert name in found.used, role
    assert "STRONGLY_TYPED" in found.guarded and "STRONGLY_TYPED" not in found.used
    # Our own objects are not TensorRT's: the memory provider's pycuda context has push/pop, no TensorRT name.
    assert "push" not in found.used and "alloc" not in found.used


def test_every_tensorrt_name_we_use_exists_in_10_and_11(usage, bindings):
    assert problems(usage, bindings) == []
    print(f"\nchecked against TensorRT {', '.join(b.version for b in bindings)}: "
          f"{len(usage.used)} names used unguarded: {', '.join(sorted(usage.used))}; "
          f"guarded (version-specific allowed): {', '.join(sorted(usage.guarded))}")


PLANTS = {
    # a misspelt method on a config object
    "config.set_memory_pool_limit(": "config.set_memory_pool_limt(",
    # a module attribute that no version has
    "trt.MemoryPoolType.WORKSPACE": "trt.MemoryPoolType.WORKSPACES",
    # an enum value only TensorRT 10 has, used without a guard
    'getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)': "trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH",
    # a guarded name that exists nowhere
    'getattr(trt.BuilderFlag, "TF32", None)': 'getattr(trt.BuilderFlag, "TF33", None)',
}


@pytest.mark.parametrize("old,new", list(PLANTS.items()), ids=["method", "attribute", "version-only", "guarded"])
def test_a_planted_bad_name_fails_the_check(bindings, old, new):
    path = REPO / "lrformer_deploy" / "build" / "engine.py"
    source = path.read_text(encoding="utf-8")
    assert old in source
    source = source.replace(old, new)  # every occurrence: the docstring names some calls too
    planted = new.split('"')[1] if '"' in new else new.split(".")[-1].split("(")[0]
    found = tn.Usage()
    tn.analyse_source(source, "build/engine.py (planted)", found)
    tn.analyse_source((REPO / "lrformer_deploy/runtime/backends/trt.py").read_text(encoding="utf-8"), "trt.py", found)
    report = problems(found, bindings)
    assert any(line.startswith(planted + " ") for line in report), report
