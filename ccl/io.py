"""Files ccl trusts: atomic writes (a reader, or a crash, never sees a half-written file),
folder locks, and the one way back in: every read opens a regular file without blocking,
bounded in size, and checks its content against a shape before anything acts on it."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pickle
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from ccl.fields import NUMBER, results_values_problem


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
        # Emptied before it is unlinked: a writer that failed may still hold it open (torch's
        # does, from the traceback), and an unlinked open file keeps its blocks; on a full
        # disk those are the space the run needs to record that it failed.
        with contextlib.suppress(OSError):
            os.truncate(tmp, 0)
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files `atomic_write` left in `folder` when its process was
    killed (-9) mid-write; returns them. Call it holding the folder's lock (`folder_lock`):
    every writer of a run folder holds it, so a temporary found then is no live write's."""
    stale = [p for p in Path(folder).glob(".*.tmp") if not p.is_dir() or p.is_symlink()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n"))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def save_torch(path: Path, obj: Any) -> None:
    import torch  # here, not at the top: the command line reads locks and JSON without loading torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb", buffering=0) as f:  # ours: closed however torch fails, nothing left to flush
            try:
                torch.save(obj, f)
            except RuntimeError as e:  # torch's zip writer reports a failed write (a full disk) as RuntimeError
                failed = e.__context__  # the OSError our file raised, which torch caught
                if isinstance(failed, OSError) and failed.errno:
                    raise OSError(failed.errno, failed.strerror, str(path)) from None
                if "PytorchStreamWriter" not in str(e) and "unexpected pos" not in str(e):
                    raise
                raise OSError(errno.EIO, "the write failed", str(path)) from None
    atomic_write(path, write)


# The shapes of the run-folder files ccl reads back: {key: shape} is an object with at
# least these keys, [shape] a list of such values, a type (or tuple) an instance of it.
# One number per experience done (a checkpoint holds them too, as far as it got).
SERIES_SHAPE = {"accuracy_matrix": [[NUMBER]], "seen_accuracy": [NUMBER], "average_accuracy": [NUMBER],
                "forgetting": [NUMBER], "bwt": [NUMBER], "train_seconds": [NUMBER],
                "memory_update_seconds": [NUMBER], "eval_seconds": [NUMBER]}
RESULTS_SHAPE = {"memory": str, "seed": int, "final_average_accuracy": NUMBER, "average_forgetting": NUMBER,
                 "final_bwt": NUMBER, "experience_classes": [[int]], **SERIES_SHAPE,
                 "memory_size": {"images": int, "bytes": int}, "total_seconds": NUMBER, "peak_ram_mib": NUMBER}
STATUS_SHAPE = {"status": str}
CONFIG_SHAPE = {"run": {"memory": str, "seed": int}}
GRID_SHAPE = {"memories": [str], "seeds": [int], "settings": dict}  # a comparison's grid.json


def ram_bytes() -> int:
    """The machine's physical memory: no file ccl reads, and nothing it allocates, can be larger."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


MAX_JSON_BYTES = 64 * 2**20  # a run's results.json is some KiB, a big comparison's some MiB

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))


def open_regular(path: Path, limit: int, what: str = "file", links: bool = False) -> BinaryIO:
    """`path` opened for reading, if it is a regular file of at most `limit` bytes; else a
    one-line CclError. Opened without blocking: a FIFO in a file's place is refused at once
    instead of waiting forever for a writer. A symbolic link is refused too, unless `links`
    (a file the user names, not one ccl wrote into its own folders)."""
    from ccl.errors import CclError
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | (0 if links else os.O_NOFOLLOW))
    except FileNotFoundError:
        raise CclError(f"{path}: file not found") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CclError(f"{path}: is a symbolic link; ccl reads its own files only as it wrote them") from None
        raise CclError(f"{path}: cannot read it ({e.strerror})") from None
    st = os.fstat(fd)  # of what was opened, not of what the name points to a moment later
    kind = next((name for test, name in _KINDS if test(st.st_mode)), None)
    if kind or st.st_size > limit:
        os.close(fd)
        raise CclError(f"{path}: is {kind}, not a regular file" if kind else
                       f"{path}: {st.st_size:,} bytes is too large for a {what} (at most {limit:,})")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


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


def series_problem(results: dict, steps: int, experiences: int) -> str | None:
    """What makes `results`' series (of SERIES_SHAPE) disagree with `steps` experiences
    done out of `experiences` (one row each of every experience's test accuracy), or None."""
    for key in SERIES_SHAPE:
        if len(results[key]) != steps:
            return f"{key} has {len(results[key])} entries for {steps} experiences done"
    for i, row in enumerate(results["accuracy_matrix"]):
        if len(row) != experiences:
            return f"accuracy_matrix[{i}] has {len(row)} accuracies for {experiences} experiences"
        if not all(0 <= a <= 1 for a in row):
            return f"accuracy_matrix[{i}] holds an accuracy outside [0, 1]"
    return results_values_problem(results)  # every figure finite and in its range


def results_problem(results: dict) -> str | None:
    """What is inconsistent in a results.json of RESULTS_SHAPE, or None: every experience
    done has its row and its entry in every series (a joint run: one row)."""
    experiences = len(results["experience_classes"])
    steps = len(results["accuracy_matrix"])
    if experiences == 0 or steps not in (1, experiences):
        return f"accuracy_matrix has {steps} rows for {experiences} experiences"
    return series_problem(results, steps, experiences)


def read_json(path: Path, shape: Any = None, check: Callable[[Any], str | None] | None = None) -> Any:
    """A JSON file; with `shape`, checked to have it, and with `check` (called on data of
    that shape, returning what is wrong or None) to be consistent: a CclError naming the
    file and the first thing wrong, never a traceback further on."""
    from ccl.errors import CclError
    try:
        with open_regular(path, MAX_JSON_BYTES, "JSON file") as f:
            data = json.loads(f.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CclError(f"{path}: corrupt or truncated JSON ({e})") from None
    except RecursionError:
        raise CclError(f"{path}: not what ccl wrote there (nested too deeply to read)") from None
    try:
        problem = None if shape is None else shape_problem(data, shape)
        problem = problem or (check(data) if check else None)
    except RecursionError:
        problem = "nested too deeply"
    if problem:
        raise CclError(f"{path}: not what ccl wrote there ({problem})")
    return data


def read_results(path: Path) -> dict:
    """A finished run's results.json, checked whole (RESULTS_SHAPE and `results_problem`)."""
    return read_json(path, RESULTS_SHAPE, results_problem)


def load_torch(path: Path, what: str, links: bool = False) -> Any:
    """A file written with `save_torch`, loaded with weights_only=True: tensors and plain
    types only, so a crafted or shared file cannot run code. Any failure is a CclError
    naming the file and `what` it should have been."""
    import torch
    from ccl.errors import CclError
    try:
        with open_regular(path, ram_bytes(), what, links) as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise CclError(f"{path}: refusing to load: it holds Python objects that would have to be "
                           f"unpickled, which can run code (a crafted file, or a {what} of an older ccl)") from None
        raise CclError(f"{path}: corrupt or truncated {what} (UnpicklingError)") from None
    except CclError:
        raise
    except Exception as e:  # torch raises many kinds for a truncated or foreign file
        raise CclError(f"{path}: corrupt or truncated {what} ({type(e).__name__})") from None


LOCK_FILE = ".ccl.lock"


def refuse_links(*paths: Path) -> None:
    """A CclError for the first of `paths` that is a symbolic link, or a file with another
    name (a hard link): ccl deletes and writes only inside the folders it owns, and a link
    would take it elsewhere."""
    from ccl.errors import CclError
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise CclError(f"{path}: is a symbolic link; ccl writes only inside its own folders, not through links")
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            raise CclError(f"{path}: has {st.st_nlink - 1} other name(s) (a hard link); ccl writes only files "
                           "of its own, not through links")


def _open_lock(folder: Path, flags: int) -> int:
    """The lock file's descriptor, if it is ccl's own: a regular file of this user with no
    other name. A hard link (O_NOFOLLOW stops only symbolic ones) or a file put there by
    someone else would have ccl truncate a file outside the folder."""
    from ccl.errors import CclError
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CclError(f"{path}: is a symbolic link; refusing to write through it") from None
        raise
    st = os.fstat(fd)
    problem = ("is not a regular file" if not stat.S_ISREG(st.st_mode) else
               f"has {st.st_nlink - 1} other name(s) (a hard link)" if st.st_nlink != 1 else
               "belongs to another user" if st.st_uid != os.geteuid() else None)
    if problem:
        os.close(fd)
        raise CclError(f"{path}: {problem}; ccl's lock file is its own, so it refuses to write to it "
                       "(remove it if no ccl process is running)")
    return fd


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
