"""atomic_output keeps an earlier file through failures; SIGTERM/SIGHUP take the Ctrl-C path in CLIs."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from lrformer_deploy.atomic import atomic_open, atomic_output, write_text
from conftest import default_signals


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "graph.onnx"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write("half of the new")
            raise RuntimeError("check failed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.onnx"]


def test_completed_write_replaces_with_plain_permissions(tmp_path):
    target = tmp_path / "m.json"
    target.write_text("old")
    write_text(target, "new")
    assert target.read_text() == "new"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    with atomic_output(tmp_path / "clip.mp4") as tmp:
        assert tmp.suffix == ".mp4" and tmp.parent == tmp_path  # writers choose the format by suffix
        tmp.write_bytes(b"x")
    assert (tmp_path / "clip.mp4").read_bytes() == b"x"


def _umask():
    u = os.umask(0)
    os.umask(u)
    return u


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_cli_entry_turns_sigterm_and_sighup_into_cleanup_and_128_plus_signal(tmp_path, sig):
    marker = tmp_path / "cleaned"
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from lrformer_deploy.errors import cli_entry
        @cli_entry
        def main(argv):
            try:
                os.kill(os.getpid(), {int(sig)})
                time.sleep(5)
            finally:
                open({str(marker)!r}, "w").close()
        sys.exit(main())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                          preexec_fn=default_signals)
    assert proc.returncode == 128 + sig
    assert marker.exists()
    assert proc.stderr.strip() == f"interrupted ({signal.Signals(sig).name})"


def test_an_interrupt_wrapped_by_a_library_error_still_exits_as_the_signal(tmp_path):
    """torch's ONNX exporter turns a signal that lands inside it into its own error; the CLI still exits 143."""
    script = textwrap.dedent("""
        import os, signal, sys, time
        from lrformer_deploy.errors import cli_entry
        @cli_entry
        def main(argv):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except BaseException as exc:
                raise RuntimeError("Failed to export the model") from exc
        sys.exit(main())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                          preexec_fn=default_signals)
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.strip() == "interrupted (SIGTERM)"


def test_nohup_keeps_sighup_ignored(tmp_path):
    """`nohup lrformer-export ...`: an ignored SIGHUP stays ignored and the command runs to the end."""
    done = tmp_path / "done"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from lrformer_deploy.errors import cli_entry
        @cli_entry
        def main(argv):
            os.kill(os.getpid(), signal.SIGHUP)  # the terminal closes
            open({str(done)!r}, "w").close()
            return 0
        sys.exit(main())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                          preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    assert proc.returncode == 0, proc.stderr
    assert done.exists()
