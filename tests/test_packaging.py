"""What `pip install .` ships: every package, the task files from tasks/, the shipped models.

pyproject.toml lists the packages by hand (the top-level tasks/ folder installs as the package
``sparse_lens.tasks.defs``), so a new package directory must be added there; the first test
says which. The others build a real wheel from the checkout's files (and an editable install of them),
install it in a fresh virtual environment and list the tasks from outside the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
    "setuptools"
]
N_TASKS = 20


def test_every_package_directory_is_listed_in_pyproject():
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "sparse_lens").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    listed = set(SETUPTOOLS["packages"])
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    mapped = set(SETUPTOOLS["package-dir"])
    assert listed - found == mapped == {"sparse_lens.tasks.defs"}
    assert SETUPTOOLS["package-dir"]["sparse_lens.tasks.defs"] == "tasks"


def _checkout_files() -> list[str]:
    """Files of the checkout a build sees: tracked or new, not ignored (no caches, no runs)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs a git checkout")
    return [f for f in listed.decode().split("\0") if f and (ROOT / f).is_file()]


def _copy_checkout(files: list[str], target: Path) -> Path:
    """A copy of the checkout, so a build leaves no build/ or egg-info in the real one."""
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes((ROOT / name).read_bytes())
    return target


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", PIP_NO_INDEX="1")
    return env


def _fresh_venv_with(tmp_path: Path, *install: str) -> Path:
    """A new virtual environment (dependencies from this one) with ``pip install *install``."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
        check=True,
    )
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
        + ["--ignore-installed", *install],
        check=True,
        env=_env(),
        capture_output=True,
    )
    return python


def _run_outside(tmp_path: Path, python: Path, *args: str) -> str:
    """stdout of ``python *args`` run from a folder outside any checkout."""
    outside = tmp_path / "elsewhere"
    outside.mkdir(exist_ok=True)
    run = subprocess.run(
        [str(python), *args], cwd=outside, check=True, env=_env(), capture_output=True, text=True
    )
    return run.stdout


WHERE = "import sparse_lens.tasks as t; print(t.BUILTIN_TASKS_DIR)"


def test_wheel_ships_the_task_files_and_installs_them(tmp_path):
    files = _checkout_files()
    source = _copy_checkout(files, tmp_path / "source")
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(wheels), str(source)],
        check=True,
        env=_env(),
        capture_output=True,
    )
    (wheel,) = wheels.glob("sparse_lens-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())

    defs = {n for n in shipped if n.startswith("sparse_lens/tasks/defs/")}
    assert {n for n in defs if n.endswith(".toml")} == {
        f"sparse_lens/tasks/defs/{Path(f).name}"
        for f in files
        if f.startswith("tasks/") and f.endswith(".toml")
    }
    assert len(defs) == N_TASKS + 1 and "sparse_lens/tasks/defs/README.md" in defs
    # nothing of the package is dropped: every checkout file under sparse_lens/ is in the wheel
    package = {f for f in files if f.startswith("sparse_lens/")}
    assert package - shipped == set()

    python = _fresh_venv_with(tmp_path, str(wheel))
    site = _run_outside(
        tmp_path, python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"
    )
    where = Path(_run_outside(tmp_path, python, "-c", WHERE).strip())
    assert where == Path(site.strip()) / "sparse_lens" / "tasks" / "defs"
    listed = _run_outside(tmp_path, python, "-m", "sparse_lens", "tasks", "list")
    assert f"\n{N_TASKS} tasks" in listed


def test_editable_install_reads_the_checkouts_tasks_folder(tmp_path):
    source = _copy_checkout(_checkout_files(), tmp_path / "source")
    python = _fresh_venv_with(tmp_path, "-e", str(source))
    assert Path(_run_outside(tmp_path, python, "-c", WHERE).strip()) == source / "tasks"
    listed = _run_outside(tmp_path, python, "-m", "sparse_lens", "tasks", "list")
    assert f"\n{N_TASKS} tasks" in listed
