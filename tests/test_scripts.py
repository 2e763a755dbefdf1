"""The install scripts end in one line that says what is wrong (issue 18, item 11).

- scripts/system-packages.sh waits for the dpkg lock another apt holds (apt's DPkg::Lock::Timeout)
  and says so, instead of failing at once with apt's exit 100. Run here against a stand-in
  `apt-get` on PATH that records its arguments (the real one would install packages).
- scripts/bootstrap.sh, offline on a fresh checkout, names what it could not install in one line
  instead of pip's raw error. Run for real, in a copy of the checkout, against a package index
  nobody listens on.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cds_service.cli.processes import free_port

ROOT = Path(__file__).resolve().parent.parent

FAKE_APT = """#!/bin/sh
echo "$@" >> "{log}"
exit {code}
"""
FAKE_SUDO = """#!/bin/sh
[ "$1" = "-n" ] && shift
exec "$@"
"""


def stand_in_bin(tmp_path: Path, apt_exit: int) -> Path:
    """A PATH holding what system-packages.sh runs: the shell tools, and stand-ins for apt-get and
    sudo; no chromium on it, so the script has a package to install."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sh", "ls", "id", "cat", "mktemp", "rm", "grep", "tail"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    for name, text in (
        ("apt-get", FAKE_APT.format(log=tmp_path / "apt.log", code=apt_exit)),
        ("sudo", FAKE_SUDO),
    ):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def run_system_packages(tmp_path: Path, apt_exit: int) -> subprocess.CompletedProcess:
    bin_dir = stand_in_bin(tmp_path, apt_exit)
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "system-packages.sh")],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_system_packages_waits_for_the_dpkg_lock_and_says_so(tmp_path):
    run = run_system_packages(tmp_path, apt_exit=0)
    assert run.returncode == 0, run.stderr
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert calls and all("DPkg::Lock::Timeout=" in call for call in calls), calls
    timeout = int(calls[0].split("DPkg::Lock::Timeout=")[1].split()[0])
    assert timeout >= 60
    assert "chromium" in run.stderr and "dpkg lock" in run.stderr and f"{timeout} s" in run.stderr


def test_system_packages_failing_apt_is_one_line(tmp_path):
    """apt still failing (the lock never freed, no package index): one line naming what is missing."""
    run = run_system_packages(tmp_path, apt_exit=100)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("system-packages:") and "chromium" in last and "100" in last, run.stderr


@pytest.fixture
def fresh_checkout(tmp_path) -> Path:
    """A copy of what bootstrap.sh installs from: no .venv, no .venv-fhir."""
    copy = tmp_path / "checkout"
    (copy / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "bootstrap.sh", copy / "scripts" / "bootstrap.sh")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, copy / name)
    shutil.copytree(ROOT / "cds_service", copy / "cds_service", ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_bootstrap_offline_names_what_is_missing_in_one_line(fresh_checkout, tmp_path):
    dead_index = f"http://127.0.0.1:{free_port()}/simple"  # nothing listens there: offline
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "VIRTUAL_ENV", "PYTHON"))
    }
    environment.update(
        PIP_INDEX_URL=dead_index,
        PIP_NO_CACHE_DIR="1",
        PIP_RETRIES="0",
        PIP_TIMEOUT="2",
        PIP_CONFIG_FILE=os.devnull,
        PATH=f"{Path(sys.executable).parent}:{environment.get('PATH', '')}",
    )
    # the system's python3, as on a fresh machine (the suite's own venv comes first on PATH otherwise)
    environment["PATH"] = environment["PATH"].split(":", 1)[1]
    run = subprocess.run(
        ["bash", "scripts/bootstrap.sh"],
        cwd=fresh_checkout,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert all(line.startswith("bootstrap:") for line in lines), run.stderr[-3000:]
    last = lines[-1]
    assert "package index" in last and dead_index in last and "setuptools" in last, last
    assert (fresh_checkout / ".venv" / "pip-install.log").is_file()  # pip's own words, kept for whoever asks
    executable = fresh_checkout / ".venv" / "bin" / "python"
    assert not (executable.exists() and executable.stat().st_mode & stat.S_IXUSR and _imports(executable))


def _imports(python: Path) -> bool:
    return subprocess.run([str(python), "-c", "import cds_service.cli.main"], capture_output=True).returncode == 0
