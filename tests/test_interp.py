"""Which micropython runs the firmware: one lookup (host_tools/interp.py) for the sim, the
tests, the server's price check and the benches; $WASHPAY_MICROPYTHON and `sim run
--micropython` name another one (e.g. the 32-bit build), a wrong name is one clear line."""

import subprocess
import sys

import pytest
from conftest import ROOT, micropython_path

from host_tools import interp


def fake(tmp_path, name="micropython"):
    path = tmp_path / name
    path.write_text("#!/bin/sh\necho fake\n")
    path.chmod(0o755)
    return path


def test_environment_variable_names_the_interpreter(tmp_path, monkeypatch):
    path = fake(tmp_path)
    monkeypatch.setenv("WASHPAY_MICROPYTHON", str(path))
    assert interp.micropython() == str(path)
    assert micropython_path() == str(path)  # the tests' lookup is the same one
    other = fake(tmp_path, "other")
    assert interp.micropython(str(other)) == str(other)  # an explicit one wins


def test_unset_means_the_environments_own(monkeypatch):
    monkeypatch.delenv("WASHPAY_MICROPYTHON", raising=False)
    assert interp.micropython().endswith("micropython")


@pytest.mark.parametrize("bad", ["missing", "not-executable"])
def test_a_wrong_name_is_a_clear_error(tmp_path, monkeypatch, bad):
    path = tmp_path / "mp"
    if bad == "not-executable":
        path.write_text("")
    monkeypatch.setenv("WASHPAY_MICROPYTHON", str(path))
    with pytest.raises(interp.InterpreterError, match=r"\$WASHPAY_MICROPYTHON names .*"
                       r"not an executable file"):
        interp.micropython()


def test_sim_run_refuses_a_missing_interpreter_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "host_tools.cli", "sim", "run", "--state",
                           str(tmp_path / "st"), "--micropython", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"washpay sim run: --micropython names {tmp_path / 'nope'}, which is not an "
        "executable file"]
    assert not (tmp_path / "st").exists()


def test_the_32_bit_interpreter_is_found_by_variable_or_beside_the_repo(tmp_path, monkeypatch):
    path = fake(tmp_path, "micropython-i386")
    monkeypatch.setenv("WASHPAY_MICROPYTHON32", str(path))
    assert interp.micropython32() == str(path)
    monkeypatch.delenv("WASHPAY_MICROPYTHON32")
    monkeypatch.setattr(interp, "SHARED32", tmp_path / "none")
    assert interp.micropython32() is None
    monkeypatch.setattr(interp, "SHARED32", path)
    assert interp.micropython32() == str(path)
