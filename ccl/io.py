"""Atomic file writes: a reader (or a crash) never sees a half-written file."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable


def _file_mode() -> int:
    """The mode an ordinary open() gives a new file now (mkstemp's own is 0600)."""
    try:  # read, not set: setting the umask to read it would race with other threads
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, _file_mode())
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: the old file or the new one, never half
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n"))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def save_torch(path: Path, obj: Any) -> None:
    import torch  # here, not at the top: the command line reads locks and JSON without loading torch
    try:
        atomic_write(path, lambda p: torch.save(obj, p))
    except RuntimeError as e:  # torch's zip writer reports a failed write (a full disk) as RuntimeError
        if "PytorchStreamWriter" not in str(e) and "unexpected pos" not in str(e):
            raise
        import shutil
        full = shutil.disk_usage(Path(path).parent).free == 0
        raise OSError(errno.ENOSPC if full else errno.EIO,
                      "No space left on device" if full else "the write failed", str(path)) from None


NUMBER = (int, float)
# The shapes of the run-folder files ccl reads back: {key: shape} is an object with at
# least these keys, [shape] a list of such values, a type (or tuple) an instance of it.
RESULTS_SHAPE = {"memory": str, "seed": int, "final_average_accuracy": NUMBER,
                 "average_forgetting": NUMBER, "accuracy_matrix": [[NUMBER]],
                 "average_accuracy": [NUMBER], "experience_classes": [[int]]}
STATUS_SHAPE = {"status": str}
CONFIG_SHAPE = {"run": {"memory": str, "seed": int}}
GRID_SHAPE = {"memories": [str], "seeds": [int], "settings": dict}  # a comparison's grid.json


def shape_problem(value: Any, shape: Any, where: str = "") -> str | None:
    """What in `value` does not have `shape` (see RESULTS_SHAPE), or None."""
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{where or 'the file'} should be a JSON object, not {type(value).__name__}"
        for key, inner in shape.items():
            if key not in value:
                return f"{where + '.' if where else ''}{key} is missing"
            problem = shape_problem(value[key], inner, f"{where + '.' if where else ''}{key}")
            if problem:
                return problem
        return None
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{where} should be a list, not {type(value).__name__}"
        return next((p for i, v in enumerate(value) if (p := shape_problem(v, shape[0], f"{where}[{i}]"))), None)
    if isinstance(value, bool) or not isinstance(value, shape):
        names = " or ".join(t.__name__ for t in (shape if isinstance(shape, tuple) else (shape,)))
        return f"{where} should be {'a number' if shape == NUMBER else names}, not {json.dumps(value)[:40]}"
    return None


def read_json(path: Path, shape: Any = None) -> Any:
    """A JSON file; with `shape`, checked to have it (a CclError naming the file and the
    first thing wrong, never a traceback further on)."""
    from ccl.errors import CclError
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CclError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CclError(f"{path}: corrupt or truncated JSON ({e})") from None
    except RecursionError:
        raise CclError(f"{path}: not what ccl wrote there (nested too deeply to read)") from None
    try:
        problem = None if shape is None else shape_problem(data, shape)
    except RecursionError:
        problem = "nested too deeply"
    if problem:
        raise CclError(f"{path}: not what ccl wrote there ({problem})")
    return data


def load_torch(path: Path, what: str) -> Any:
    """A file written with `save_torch`, loaded with weights_only=True: tensors and plain
    types only, so a crafted or shared file cannot run code. Any failure is a CclError
    naming the file and `what` it should have been."""
    import torch
    from ccl.errors import CclError
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CclError(f"{path}: file not found") from None
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise CclError(f"{path}: refusing to load: it holds Python objects that would have to be "
                           f"unpickled, which can run code (a crafted file, or a {what} of an older ccl)") from None
        raise CclError(f"{path}: corrupt or truncated {what} (UnpicklingError)") from None
    except Exception as e:  # torch raises many kinds for a truncated or foreign file
        raise CclError(f"{path}: corrupt or truncated {what} ({type(e).__name__})") from None


LOCK_FILE = ".ccl.lock"


def refuse_links(*paths: Path) -> None:
    """A CclError for the first of `paths` that is a symbolic link: ccl deletes and writes
    only inside the folders it owns, and a link would take it elsewhere."""
    from ccl.errors import CclError
    for path in paths:
        if Path(path).is_symlink():
            raise CclError(f"{path}: is a symbolic link; ccl writes only inside its own folders, not through links")


def _open_lock(folder: Path, flags: int) -> int:
    from ccl.errors import CclError
    try:
        return os.open(folder / LOCK_FILE, flags | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CclError(f"{folder / LOCK_FILE}: is a symbolic link; refusing to write through it") from None
        raise


def folder_holder(folder: Path) -> str | None:
    """The process id holding `folder`'s lock, or None when no process holds it."""
    if not (Path(folder) / LOCK_FILE).is_file() or (Path(folder) / LOCK_FILE).is_symlink():
        return None
    fd = _open_lock(Path(folder), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: Path, what: str):
    """Hold an exclusive lock on `folder` (a run or comparison folder) while writing it.

    A second writer gets a CclError at once naming the holder's process id. The lock is
    an flock on `folder/.ccl.lock`: the kernel releases it when its process ends, however
    it ends, so a lock left by a killed process never blocks. Neither the folder nor its
    lock file may be a symbolic link.
    """
    from ccl.errors import CclError
    folder = Path(folder)
    refuse_links(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = _open_lock(folder, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise CclError(f"{folder}: in use by another ccl process (pid {holder}, {what}); "
                           "wait for it to finish or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
