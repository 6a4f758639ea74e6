"""The CLI wrapper: user mistakes, missing optional packages and closed pipes never show a traceback."""
from __future__ import annotations

import subprocess
import sys

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
                                             "pip install 'lrformer-deploy[export]'"]


def test_closed_pipe_is_quiet():
    code = ("import sys; from lrformer_deploy.errors import cli_entry\n"
            "@cli_entry\ndef main(argv=None):\n    [print('x' * 100) for _ in range(100000)]\n"
            "sys.exit(main())\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0 and "Traceback" not in err
