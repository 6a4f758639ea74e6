"""The CLI wrapper: user mistakes, missing optional packages and closed pipes never show a traceback."""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from lrformer_deploy.errors import UserError, cli_entry


def test_user_error_is_one_line_exit_2(capsys):
    @cli_entry
    def main(argv=None):
        raise UserError("file x not found")

    assert main() == 2
    assert capsys.readouterr().err == "error: file x not found\n"


def test_missing_optional_package_names_the_extra(capsys):
    @cli_entry
    def main(argv=None):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    assert main() == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "lrformer-deploy[export]" in err and err.count("\n") == 1


def test_export_without_torch_is_one_line(tmp_path):
    """Block torch in a subprocess, as on a runtime-only install."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text("import sys\nclass B:\n    def find_spec(self, name, path=None, target=None):\n"
                       "        if name == 'torch' or name.startswith('torch.'):\n"
                       "            raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n"
                       "sys.meta_path.insert(0, B())\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "lrformer_deploy.cli.export", "--ckpt", "x.pth"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["error: this command needs the torch package: "
                                             "pip install 'torch==2.13.0' 'lrformer-deploy[export]' "
                                             "(the pinned CPU build we test)"]


def test_closed_pipe_is_quiet():
    code = ("import sys; from lrformer_deploy.errors import cli_entry\n"
            "@cli_entry\ndef main(argv=None):\n    [print('x' * 100) for _ in range(100000)]\n"
            "sys.exit(main())\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0 and "Traceback" not in err


REPO = Path(__file__).resolve().parent.parent
CLIS = ["infer", "export", "bench", "eval", "info", "serve", "triton", "batch", "gst"]
NO_TORCH = ("import sys\nclass B:\n    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n"
            "sys.meta_path.insert(0, B())\n")


def _abbreviations(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(option, the option shortened by one letter) for every long option no other option starts like."""
    longs = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    return [(o, o[:-1]) for o in longs if len(o) >= 6 and sum(x.startswith(o[:-1]) for x in longs) == 1]


@pytest.mark.parametrize("name", CLIS)
def test_every_cli_refuses_abbreviated_options(name):
    parser = importlib.import_module(f"lrformer_deploy.cli.{name}").build_parser()
    pairs = _abbreviations(parser)
    assert pairs
    for full, short in pairs:
        # argparse's own lookup of one argv word: the option it would bind (None: not an option of ours).
        assert parser._parse_optional(full)[0] is not None  # the control: the full spelling is found
        assert parser._parse_optional(short)[0] is None, (name, short)


def test_abbreviated_option_is_one_error_line():
    r = subprocess.run([sys.executable, "-m", "lrformer_deploy.cli.infer", "in.mp4", "--max-frame", "5"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2 and r.stderr.startswith("error: unrecognized arguments: --max-frame 5")
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_torch_has_one_install_hint_in_every_command(tmp_path):
    """Every command that needs torch says so the same way: the export extra with the CPU pin, never a bare
    `pip install torch`."""
    from lrformer_deploy.errors import install_hint

    (tmp_path / "sitecustomize.py").write_text(NO_TORCH)
    (tmp_path / "x.pth").write_bytes(b"PK not really a checkpoint")
    env = {"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "LRFORMER_DEPLOY_CACHE": str(tmp_path / "cache")}
    hint = install_hint("torch")
    assert hint.startswith("pip install 'torch==2.13.0' 'lrformer-deploy[export]'")
    commands = {
        "export": ["--variant", "demo", "--size", "64x64", "--output-dir", str(tmp_path / "o")],
        "info": ["--variant", "T"],
        "bench": ["--variant", "demo", "--size", "64x64"],
        "infer": [str(REPO / "samples" / "synthetic-scenes.mp4"), "--model", str(tmp_path / "x.pth")],
        "eval": ["--model", str(tmp_path / "x.pth")],
    }
    for name, argv in commands.items():
        r = subprocess.run([sys.executable, "-m", f"lrformer_deploy.cli.{name}", *argv], capture_output=True,
                           text=True, env=env, timeout=120, cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (name, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and hint in lines[0], (name, r.stderr)
        if name in ("infer", "eval"):  # their own check, before anything is opened, says what needs torch
            assert "a .pth model" in lines[0], (name, r.stderr)
    import lrformer_deploy

    bare = [str(p.relative_to(REPO)) for p in Path(lrformer_deploy.__file__).parent.rglob("*.py")
            if "pip install torch" in p.read_text() or "pip install tensorrt" in p.read_text()
            or "pip install pycuda" in p.read_text()]
    assert bare == []
