"""Writing files so that nothing is ever half-written (the lowest room: no torch).

Every file a reader may see while it is written — a checkpoint, a summary, the metrics
CSV, a cached corpus, a downloaded split — goes through :func:`atomic_write_bytes`.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from rnnreg import RnnregError
from rnnreg.core.testhooks import pause_point


def atomic_write_bytes(path: Path, payload: bytes, keep_previous: Path | None = None) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file or the new one, whole.

    The bytes go to a temporary file in the same folder, are flushed to disk, and the
    file is renamed into place (then the folder is synced, so the rename survives a power
    cut). ``keep_previous`` first moves the current ``path`` there, so that two good
    copies exist. A failed write (a full disk, an unwritable folder) removes the
    temporary file, leaves ``path`` as it was and raises one :class:`RnnregError` line.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            if path.suffix == ".pt":  # half written (the kill tests stop the process here)
                handle.write(payload[: len(payload) // 2])
                handle.flush()
                pause_point("checkpoint")
                handle.write(payload[len(payload) // 2 :])
            else:
                handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
        _sync_folder(path.parent)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # no folder to clean (a file stands where it should be)
            pass
        raise RnnregError(
            f"could not write {path} ({exc.strerror or exc}); free disk space or make the "
            "folder writable, then resume with trainer.resume=true"
        ) from exc


def remove_orphaned_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files (``.<name>.<pid>.tmp``) that :func:`atomic_write_bytes`
    left in ``folder`` when its process was killed mid-write; return what was deleted.

    Call it only while holding the folder's run lock (rnnreg/core/process.py
    ``exclusive_run``): then no other process can be writing there, and every temporary
    file not of this process is an orphan. A checkpoint's orphan is as big as the
    checkpoint, so each kill during a write would otherwise leave one behind for good.
    """
    removed = []
    for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
        if tmp.name.endswith(f".{os.getpid()}.tmp"):
            continue
        try:
            tmp.unlink()
        except OSError:  # gone already, or not ours to delete: leave it
            continue
        removed.append(tmp)
    return removed


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: object, path: Path, keep_previous: Path | None = None) -> None:
    """``torch.save`` of ``obj`` into ``path`` through :func:`atomic_write_bytes`: a reader
    (or a resume after kill -9) sees the old file or the new one, never half of one."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue(), keep_previous=keep_previous)
