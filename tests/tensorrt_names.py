"""TensorRT names: those a bindings wheel registers, and those our code uses (read from its AST).

Registered names. `tensorrt-cu12-bindings` wheels hold one pybind11 module, `tensorrt_bindings/
tensorrt.so`, that cannot be imported without libnvinfer. pybind11 keeps every class, function,
method, property and enum-value name as a C string literal that the module's init code passes to
`class_`, `def`, `def_property`, `value`... The linker merges string tails (the literal "Builder" is
stored inside "IBuilder"), so scanning the file for whole strings misses names and scanning for
substrings invents them. Instead we take the strings the code actually points at: every x86-64
RIP-relative LEA target and every R_X86_64_RELATIVE relocation addend that lands in .rodata, read up to
the NUL. That yields "Builder" (a pointer into "IBuilder") and not "uilder". The pure-Python names of
the package's `__init__.py` (`nptype`, `__version__`, ...) are added from its AST.

Used names. Every attribute reached from a name bound by `import tensorrt [as X]`, and every attribute
reached from a variable holding a TensorRT object, where a variable holds one when it is assigned the
result of such a chain (`builder = trt.Builder(...)`, `network = builder.create_network(...)`,
`self.context = engine.create_execution_context()`, ...). Names passed as strings to
`getattr(<tensorrt chain>, "NAME", default)` / `hasattr(<tensorrt chain>, "NAME")` are *guarded*: the
code copes with their absence, so they may exist in only some versions.
"""
from __future__ import annotations

import ast
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

_IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
_LEA_RIP = re.compile(rb"[\x48\x4c]\x8d[\x05\x0d\x15\x1d\x25\x2d\x35\x3d]", re.DOTALL)
_R_X86_64_RELATIVE = 8


def _elf_sections(data: bytes) -> dict[str, tuple[int, int, int]]:
    """name -> (virtual address, file offset, size) of a little-endian ELF64 file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian 64-bit ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_off = headers[shstrndx][4]
    out = {}
    for name, _type, _flags, addr, off, size in headers:
        end = data.index(b"\0", names_off + name)
        out[data[names_off + name:end].decode()] = (addr, off, size)
    return out


def registered_names_of_so(data: bytes) -> set[str]:
    """Identifier-shaped C strings the module's code or relocated data points at (see module doc)."""
    sec = _elf_sections(data)
    ro_addr, ro_off, ro_size = sec[".rodata"]
    tx_addr, tx_off, tx_size = sec[".text"]
    starts = set()
    text = data[tx_off:tx_off + tx_size]
    for m in _LEA_RIP.finditer(text):
        (disp,) = struct.unpack_from("<i", text, m.start() + 3)
        target = tx_addr + m.start() + 7 + disp
        if ro_addr <= target < ro_addr + ro_size:
            starts.add(target - ro_addr)
    if ".rela.dyn" in sec:
        _, off, size = sec[".rela.dyn"]
        for k in range(off, off + size - 23, 24):
            _, info, addend = struct.unpack_from("<QQq", data, k)
            if info & 0xFFFFFFFF == _R_X86_64_RELATIVE and ro_addr <= addend < ro_addr + ro_size:
                starts.add(addend - ro_addr)
    rodata = data[ro_off:ro_off + ro_size]
    names = set()
    for start in starts:
        end = rodata.find(b"\0", start)
        if end > start and _IDENT.fullmatch(rodata[start:end]):
            names.add(rodata[start:end].decode())
    return names


def python_names_of_init(source: str) -> set[str]:
    """Module-level names a package `__init__.py` defines itself."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


@dataclass
class Bindings:
    version: str
    names: set[str]

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def read_wheel(path: Path) -> Bindings:
    version = path.name.split("-")[1]
    with zipfile.ZipFile(path) as zf:
        so = next(n for n in zf.namelist() if re.fullmatch(r"tensorrt[^/]*/tensorrt[^/]*\.so", n))
        init = so.rsplit("/", 1)[0] + "/__init__.py"
        names = registered_names_of_so(zf.read(so)) | python_names_of_init(zf.read(init).decode())
    return Bindings(version, names)


# --- what our code uses ---------------------------------------------------------------------------

@dataclass
class Usage:
    used: dict[str, set[str]] = field(default_factory=dict)     # name -> "file:line" places
    guarded: dict[str, set[str]] = field(default_factory=dict)  # getattr/hasattr string names
    holders: set[str] = field(default_factory=set)              # variables found holding TensorRT objects

    def add(self, table: dict, name: str, where: str) -> None:
        table.setdefault(name, set()).add(where)


_CLASS_OF: dict[int, str] = {}  # id(node) -> enclosing class, filled per analysed tree


def _var(node: ast.AST) -> str | None:
    """'x' for a Name, 'Class.self.x' for an attribute of self (per class: pycuda's context held by a
    memory provider is not the runner's execution context): the variables we track."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return f"{_CLASS_OF.get(id(node), '')}.self.{node.attr}"
    return None


def _root(node: ast.AST) -> ast.AST:
    """The innermost object of a chain like a.b(c).d[0].e."""
    while True:
        if isinstance(node, ast.Attribute):
            if (_var(node) or "").partition(".self.")[1]:
                return node
            node = node.value
        elif isinstance(node, (ast.Call, ast.Subscript)):
            node = node.func if isinstance(node, ast.Call) else node.value
        else:
            return node


def tensorrt_aliases(tree: ast.AST) -> set[str]:
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update(a.asname or a.name for a in node.names if a.name == "tensorrt")
    return aliases


def analyse_source(source: str, filename: str, usage: Usage | None = None) -> Usage:
    usage = usage or Usage()
    tree = ast.parse(source, filename)
    aliases = tensorrt_aliases(tree)
    if not aliases:
        return usage
    holders = set(aliases)
    _CLASS_OF.clear()
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for inner in ast.walk(cls):
            _CLASS_OF[id(inner)] = cls.name

    def from_tensorrt(node: ast.AST) -> bool:
        if isinstance(node, ast.BoolOp):  # x = x or builder.create_optimization_profile()
            return any(from_tensorrt(v) for v in node.values)
        if isinstance(node, ast.IfExp):
            return from_tensorrt(node.body) or from_tensorrt(node.orelse)
        return _var(_root(node)) in holders

    # Holders: assigned a chain rooted at the module or at another holder; repeat until stable.
    assigns = [n for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None]
    changed = True
    while changed:
        changed = False
        for node in assigns:
            value = node.value
            if not isinstance(value, (ast.Name, ast.Attribute, ast.Call, ast.Subscript, ast.BoolOp, ast.IfExp)) \
                    or not from_tensorrt(value):
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = _var(target)
                if name and name not in holders:
                    holders.add(name)
                    changed = True
    usage.holders |= holders - aliases

    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Attribute) and _var(node) not in holders and from_tensorrt(node.value):
            usage.add(usage.used, node.attr, where)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str) and from_tensorrt(node.args[0])):
            usage.add(usage.guarded, node.args[1].value, where)
    return usage


def modules_importing_tensorrt(roots: list[Path]) -> list[Path]:
    found = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            if "tensorrt" in text and tensorrt_aliases(ast.parse(text, str(path))):
                found.append(path)
    return found
