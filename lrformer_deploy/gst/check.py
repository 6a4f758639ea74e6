"""Setup of the `lrformerseg` element: the environment it needs, and a check of every piece.

The element runs in the Python interpreter that GStreamer's plugin loader (libgstpython.so) embeds:
on Debian/Ubuntu the system Python, whatever virtualenv the shell has active. This module finds that
interpreter from the loader's own library and asks it, in a subprocess, what it can import.
Standard library only (it runs in the user's venv, which has no PyGObject).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from lrformer_deploy.gst.paths import PACKAGE_ROOT, PLUGIN_DIR, PLUGIN_FILE, SITE_ENV

APT_PACKAGES = ("python3-gst-1.0", "gstreamer1.0-python3-plugin-loader", "gstreamer1.0-tools",
                "gstreamer1.0-plugins-base", "gstreamer1.0-plugins-good", "gstreamer1.0-libav")
APT_LINE = "apt-get install -y " + " ".join(APT_PACKAGES)
ENV_LINE = 'eval "$(lrformer-gst --env)"'


def site_packages() -> list[str]:
    """This interpreter's package folders (a venv's site-packages), which the embedded Python will use."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys(p for p in (paths["purelib"], paths["platlib"]) if p and Path(p).is_dir()))


def environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """GST_PLUGIN_PATH and LRFORMER_GST_SITE_PACKAGES for this install, prepended to what `base` has."""
    base = dict(os.environ if base is None else base)

    def prepend(name: str, values: list[str]) -> str:
        old = [p for p in base.get(name, "").split(os.pathsep) if p and p not in values]
        return os.pathsep.join(values + old)

    return {"GST_PLUGIN_PATH": prepend("GST_PLUGIN_PATH", [str(PLUGIN_DIR)]),
            SITE_ENV: prepend(SITE_ENV, site_packages())}


def without_venvs(path: str) -> str:
    """PATH minus virtualenv bin folders: what GStreamer subprocesses of this tool get, so that a check
    never makes the embedded Python adopt a venv (which would cache the loader as broken)."""
    return os.pathsep.join(d for d in path.split(os.pathsep) if d and not (Path(d).parent / "pyvenv.cfg").is_file())


def gst_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """A full environment for running GStreamer with the element: base + exports, PATH without venvs."""
    base = dict(os.environ if base is None else base)
    base["PATH"] = without_venvs(base.get("PATH", ""))
    return {**base, **environment(base)}


def shell_exports() -> str:
    """`export` lines for POSIX shells (what `eval "$(lrformer-gst --env)"` runs)."""
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in environment().items())


@dataclass
class Item:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    # Any GStreamer start may rescan plugins: never from a venv's PATH (see without_venvs).
    if env is None:
        env = dict(os.environ, PATH=without_venvs(os.environ.get("PATH", "")))
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def loader_library(env: dict[str, str] | None = None) -> Path | None:
    """libgstpython.so as GStreamer's registry knows it, or None."""
    if shutil.which("gst-inspect-1.0") is None:
        return None
    proc = _run(["gst-inspect-1.0", "python"], env=env)
    m = re.search(r"^\s*Filename\s+(\S+)", proc.stdout, re.M)
    return Path(m.group(1)) if proc.returncode == 0 and m else None


def embedded_python_version(library: Path) -> tuple[int, int] | None:
    """The libpythonX.Y that the loader links (read from its dynamic section's strings)."""
    try:
        m = re.search(rb"libpython(\d+)\.(\d+)", library.read_bytes())
    except OSError:
        return None
    return (int(m.group(1)), int(m.group(2))) if m else None


def embedded_interpreter(version: tuple[int, int]) -> str | None:
    """The command-line interpreter of the embedded Python: the system's pythonX.Y."""
    name = f"python{version[0]}.{version[1]}"
    for candidate in (f"/usr/bin/{name}", f"/usr/local/bin/{name}"):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which(name)


_PROBE = """
import json, sys
out = {"version": "%d.%d.%d" % sys.version_info[:3], "missing": {}, "found": {}}
sys.path.insert(0, ROOT)
from lrformer_deploy.gst.paths import extend_sys_path
extend_sys_path()
for name in MODULES:
    try:
        mod = __import__(name, fromlist=["_"])
        out["found"][name] = str(getattr(mod, "__version__", "") or getattr(mod, "__file__", ""))
    except Exception as exc:
        out["missing"][name] = "%s: %s" % (exc.__class__.__name__, exc)
print(json.dumps(out))
"""


def probe_modules(python: str, modules: list[str], env: dict[str, str]) -> dict:
    code = f"ROOT = {str(PACKAGE_ROOT)!r}\nMODULES = {modules!r}\n" + _PROBE
    proc = _run([python, "-c", code], env=env)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"version": "?", "found": {}, "missing": {"python": (proc.stderr.strip() or "no output")[-300:]}}


def path_python_conflict(embedded: str, environ=os.environ) -> str | None:
    """Why the first `python3` on PATH would hijack the embedded interpreter, or None.

    An embedded Python finds its standard library and site folders from the first `python3` on PATH:
    an activated virtualenv of another base Python (pyenv, conda) makes it adopt that base, where
    PyGObject is missing, and GStreamer then blacklists the loader in its registry cache.
    """
    found = shutil.which("python3", path=environ.get("PATH", ""))
    if not found:
        return None
    exe = Path(found)
    system_prefix = Path(embedded).resolve().parent.parent
    cfg = exe.parent.parent / "pyvenv.cfg"
    if cfg.is_file():
        home = next((line.split("=", 1)[1].strip() for line in cfg.read_text(errors="replace").splitlines()
                     if line.split("=", 1)[0].strip() == "home"), "")
        if home and Path(home).resolve().parent != system_prefix:
            return f"{found} belongs to a virtualenv of {home}, not of {Path(embedded).parent}"
        return None
    prefix = exe.resolve().parent.parent
    if prefix != system_prefix and any(prefix.glob("lib/python3.*/os.py")):
        return f"{found} is another Python installation ({prefix})"
    return None


def loader_blacklisted(env: dict[str, str] | None = None) -> bool:
    proc = _run(["gst-inspect-1.0", "-b"], env=env)
    return "libgstpython" in proc.stdout


NOT_IN_VENV = ("run GStreamer pipelines from a shell where that venv is not activated (`deactivate`; call the "
               "venv's lrformer-gst by its full path for --env), or make the venv with "
               "`/usr/bin/python3 -m venv --system-site-packages VENV`")


def run_checks() -> list[Item]:
    """Each piece the element needs, in dependency order; later checks are skipped after a failure."""
    items: list[Item] = []
    if shutil.which("gst-launch-1.0") is None or shutil.which("gst-inspect-1.0") is None:
        return [Item("GStreamer", False, "gst-launch-1.0 / gst-inspect-1.0 not found", APT_LINE)]
    version = _run(["gst-inspect-1.0", "--version"]).stdout
    m = re.search(r"GStreamer (\S+)", version)
    items.append(Item("GStreamer", True, m.group(1) if m else version.strip()))

    safe = dict(os.environ, PATH=without_venvs(os.environ.get("PATH", "")))
    library = loader_library(safe)
    if library is None:
        if loader_blacklisted(safe):
            return items + [Item("Python plugin loader", False, "GStreamer blacklisted libgstpython.so after a "
                                 "failed load (often: started from an activated virtualenv)",
                                 "rm -f ~/.cache/gstreamer-1.0/registry.*.bin (or $GST_REGISTRY), then "
                                 + NOT_IN_VENV)]
        return items + [Item("Python plugin loader", False, "GStreamer has no 'python' plugin",
                             "apt-get install -y gstreamer1.0-python3-plugin-loader python3-gst-1.0")]
    py_version = embedded_python_version(library)
    python = embedded_interpreter(py_version) if py_version else None
    if python is None:
        return items + [Item("Python plugin loader", False, f"{library}: cannot tell which Python it embeds",
                             "reinstall gstreamer1.0-python3-plugin-loader")]
    items.append(Item("Python plugin loader", True, f"{library} embeds Python {py_version[0]}.{py_version[1]} "
                                                    f"({python})"))

    conflict = path_python_conflict(python)
    if conflict:
        items.append(Item("python3 on PATH", False, f"the embedded Python would adopt it: {conflict}", NOT_IN_VENV))
    gi = probe_modules(python, ["gi", "gi.repository.Gst", "gi.repository.GstBase", "gi.repository.GstVideo"],
                       safe)
    if gi["missing"]:
        return items + [Item("PyGObject + GStreamer bindings", False, "; ".join(f"{k}: {v}" for k, v in gi["missing"].items()),
                             "apt-get install -y python3-gst-1.0")]
    items.append(Item("PyGObject + GStreamer bindings", True, f"in {python} {gi['version']}"))

    env = gst_environment()
    ours = probe_modules(python, ["numpy", "cv2", "onnxruntime", "lrformer_deploy.runtime.segmenter"], env)
    here = sys.version_info[:2]
    if ours["missing"]:
        fix = ENV_LINE
        if here != tuple(py_version):
            fix = (f"this environment is Python {here[0]}.{here[1]} but GStreamer embeds {py_version[0]}.{py_version[1]}: "
                   f"make the venv with `{python} -m venv --system-site-packages VENV`, install lrformer-deploy[cpu] "
                   f"into it, then {ENV_LINE}")
        elif os.environ.get(SITE_ENV) is None:
            fix = f"{ENV_LINE} (not set in this shell)"
        return items + [Item("lrformer-deploy in the embedded Python", False,
                             "cannot import " + "; ".join(f"{k} ({v})" for k, v in ours["missing"].items()), fix)]
    items.append(Item("lrformer-deploy in the embedded Python", True,
                      ", ".join(f"{k.split('.')[0]} {v}" for k, v in ours["found"].items() if k != "lrformer_deploy.runtime.segmenter")))

    proc = _run(["gst-inspect-1.0", "lrformerseg"], env=env)
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        return items + [Item("lrformerseg element", False, detail[-1] if detail else "not found",
                             f"check that {PLUGIN_FILE} exists; {ENV_LINE}")]
    items.append(Item("lrformerseg element", True, f"registered from {PLUGIN_FILE}"))
    if os.environ.get("GST_PLUGIN_PATH", "").split(os.pathsep).count(str(PLUGIN_DIR)) == 0 \
            or os.environ.get(SITE_ENV) is None:
        items.append(Item("this shell", False, "GST_PLUGIN_PATH / LRFORMER_GST_SITE_PACKAGES not set here", ENV_LINE))
    return items
