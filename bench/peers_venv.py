"""The peers' own virtual environment: supervisord and circus, kept out of hermesd's environment.

hermesd's top-level package is named `supervisor`, and so is supervisord's, so the two
cannot share one environment. `install()` creates `bench/.peers-venv` with `python -m venv`
and installs `bench/peers-requirements.txt` into it with its own pip. It records a hash of
that file in the venv, so a later call reuses the venv until the file changes.
The benchmark only runs the venv's scripts and its Python, and never imports from it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
VENV_DIR = BENCH_DIR / ".peers-venv"
REQUIREMENTS = BENCH_DIR / "peers-requirements.txt"
# Written after a successful install: the sha256 of the requirements file it installed.
STAMP = VENV_DIR / "installed-requirements.sha256"
# Serializes installs from two processes in the same checkout; outside the venv, which an install replaces.
LOCK = BENCH_DIR / ".peers-venv.lock"
INSTALL_COMMAND = "python -m bench.peers --install"
PIP_TIMEOUT_SECONDS = 600


def requirements_hash() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def script(name: str) -> Path:
    return VENV_DIR / "bin" / name


def python() -> Path:
    return script("python")


def is_current() -> bool:
    """Tell whether the venv exists and was installed from the current requirements file."""
    try:
        return STAMP.read_text().strip() == requirements_hash() and python().exists()
    except OSError:
        return False


def missing_reason() -> str | None:
    """Return why the peers' venv cannot be used, with the command that fixes it, or None."""
    if not VENV_DIR.exists():
        return f"{VENV_DIR} does not exist; create it with `{INSTALL_COMMAND}`"
    if not is_current():
        return (f"{VENV_DIR} was not installed from the current {REQUIREMENTS.name}; "
                f"reinstall it with `{INSTALL_COMMAND}`")
    return None


def install(force: bool = False) -> Path:
    """Create the venv and install the requirements file, unless it is already current; return the venv.

    Raises subprocess.CalledProcessError when `venv` or pip fails; the half-made venv has no
    stamp then, so the next call starts over.
    """
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_current() and not force:
            print(f"bench: {VENV_DIR} is up to date with {REQUIREMENTS.name}", flush=True)
            return VENV_DIR
        print(f"bench: creating {VENV_DIR} and installing {REQUIREMENTS.name}", flush=True)
        shutil.rmtree(VENV_DIR, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV_DIR)], check=True)
        pip = [str(python()), "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
        subprocess.run([*pip, "--requirement", str(REQUIREMENTS)], check=True, timeout=PIP_TIMEOUT_SECONDS)
        STAMP.write_text(requirements_hash() + "\n")
        print(f"bench: installed {', '.join(f'{name} {version}' for name, version in versions().items())}",
              flush=True)
        return VENV_DIR


def versions() -> dict[str, str | None]:
    """Return the installed versions of supervisor and circus in the venv (None when absent)."""
    if not python().exists():
        return {"supervisor": None, "circus": None}
    code = ("import importlib.metadata as m, json\n"
            "def version(name):\n"
            "    try:\n"
            "        return m.version(name)\n"
            "    except m.PackageNotFoundError:\n"
            "        return None\n"
            "print(json.dumps({name: version(name) for name in ('supervisor', 'circus')}))\n")
    result = subprocess.run([str(python()), "-I", "-c", code], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        return {"supervisor": None, "circus": None}
    return json.loads(result.stdout)
