"""Where task files are found: the built-in folder and the user's own folders.

The built-in tasks live in the repository's top-level ``tasks/`` folder, so users see them next
to the code and add their own beside them. A wheel installs that folder as the package
``sparse_lens.tasks.defs`` (``package-dir`` in pyproject.toml); a checkout, editable install
included, has no such folder and reads ``tasks/`` itself. A task name means one file: a user
file named like a built-in task (or like a file in another of the user's folders) is refused,
naming both, rather than silently replacing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sparse_lens.errors import SparseLensError

__all__ = ["BUILTIN_TASKS_DIR", "TasksDirs", "task_files"]

# ``tasks_dir=`` everywhere: one folder of extra task files, several, or none.
TasksDirs = str | Path | Sequence[str | Path] | None


def _builtin_tasks_dir() -> Path:
    packaged = Path(__file__).parent / "defs"  # where a wheel puts tasks/
    if any(packaged.glob("*.toml")):
        return packaged
    return Path(__file__).resolve().parents[2] / "tasks"  # the checkout's own folder


BUILTIN_TASKS_DIR = _builtin_tasks_dir()


def _folders(tasks_dir: TasksDirs) -> list[Path]:
    if tasks_dir is None:
        return []
    if isinstance(tasks_dir, (str, Path)):
        return [Path(tasks_dir)]
    return [Path(folder) for folder in tasks_dir]


def task_files(tasks_dir: TasksDirs = None) -> dict[str, Path]:
    """name -> file of every available task: the built-ins, then each folder of ``tasks_dir``."""
    files = {p.stem: p for p in sorted(BUILTIN_TASKS_DIR.glob("*.toml"))}
    seen = {BUILTIN_TASKS_DIR.resolve()}
    for folder in _folders(tasks_dir):
        if not folder.is_dir():
            raise SparseLensError(
                "tasks directory does not exist; pass a folder of task files (*.toml)",
                path=folder,
                field="tasks_dir",
            )
        if folder.resolve() in seen:  # the built-in folder, or one given twice
            continue
        seen.add(folder.resolve())
        own = sorted(folder.glob("*.toml"))
        if not own:
            raise SparseLensError(
                "no task files (*.toml) in the tasks directory", path=folder, field="tasks_dir"
            )
        for path in own:
            if path.stem in files:
                raise SparseLensError(
                    f"task {path.stem!r} is defined twice, here and in {files[path.stem]}; "
                    "rename one of the files (and its `name`)",
                    path=path,
                    field="name",
                )
            files[path.stem] = path
    return files
