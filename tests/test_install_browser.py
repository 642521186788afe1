"""tests/install-browser.sh uses the Chromium and chromedriver that are there and changes the system
(apt-get) only when neither is found, saying so. Run with a PATH of stand-ins: nothing is installed."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = REPO / "tests" / "install-browser.sh"
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None or os.name == "nt", reason="a POSIX shell script")


def _bin(tmp_path: Path, *names: str) -> Path:
    """A PATH folder with stand-ins for `names`, a root `id`, and an apt-get that records its arguments."""
    b = tmp_path / "bin"
    b.mkdir()
    for tool in ("head", "env"):
        os.symlink(shutil.which(tool), b / tool)
    scripts = {"id": "echo 0", "apt-get": f'echo "$@" >> {tmp_path / "apt.log"}'}
    scripts |= {n: 'echo "Chromium 120.0"' for n in names}
    for name, body in scripts.items():
        (b / name).write_text(f"#!{BASH}\n{body}\n")
        (b / name).chmod(0o755)
    return b


def _run(tmp_path: Path, *names: str):
    env = {"PATH": str(_bin(tmp_path, *names)), "HOME": str(tmp_path)}
    r = subprocess.run([BASH, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60)
    log = tmp_path / "apt.log"
    return r, log.read_text().splitlines() if log.is_file() else []


@pytest.mark.parametrize("names", [("chromium", "chromedriver"), ("google-chrome", "chromedriver"),
                                   ("chromium-browser", "chromium.chromedriver")])
def test_what_is_there_is_used(tmp_path, names):
    r, apt = _run(tmp_path, *names)
    assert r.returncode == 0 and not apt and not r.stderr, (r.stderr, apt)


def test_a_browser_without_its_driver_is_not_upgraded(tmp_path):
    r, apt = _run(tmp_path, "chromium")
    assert r.returncode == 1 and not apt, apt
    assert "no chromedriver was found" in r.stderr and "Nothing was installed" in r.stderr, r.stderr
    assert "Chromium 120.0" in r.stderr  # the version a matching driver needs


def test_a_driver_without_a_browser_installs_nothing(tmp_path):
    r, apt = _run(tmp_path, "chromedriver")
    assert r.returncode == 1 and not apt and "Nothing was installed" in r.stderr, r.stderr


def test_nothing_there_installs_and_says_so(tmp_path):
    r, apt = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "installing Debian's chromium and chromium-driver" in r.stderr and "changes the system" in r.stderr
    assert apt[0] == "update -qq" and apt[1].startswith("install") and "chromium-driver" in apt[1], apt


def test_the_environment_variables_win(tmp_path):
    env = {"PATH": str(_bin(tmp_path)), "IMGCLF_CHROMIUM": "/x/chrome", "IMGCLF_CHROMEDRIVER": "/x/driver"}
    r = subprocess.run([BASH, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and not (tmp_path / "apt.log").exists(), r.stderr
