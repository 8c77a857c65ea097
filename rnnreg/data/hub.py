"""The Hugging Face fallback for users who are online: the splits fetched with ``datasets`` and
written as plain text where the loader looks first (``rnnreg.data.corpus``)."""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path

from rnnreg import RnnregError
from rnnreg.config.schema import DatasetConfig
from rnnreg.core.files import atomic_write_bytes

log = logging.getLogger(__name__)


def _host_resolves(host: str, timeout_s: float) -> bool:
    """Whether DNS answers for ``host`` within ``timeout_s`` (getaddrinfo has no timeout)."""
    answer: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(answer and answer[0])


def hub_online(timeout_s: float = 2.0) -> bool:
    """False when the user asked for offline mode or the hub's host does not resolve quickly.

    In that case the hub's offline mode is switched on, so that ``datasets`` fails (or
    reads its local cache) in under a second instead of retrying for half a minute.
    """
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    if any(os.environ.get(f, "").lower() in ("1", "true", "yes", "on") for f in flags):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    if _host_resolves(host, timeout_s):
        return True
    for flag in flags:
        os.environ[flag] = "1"
    return False


def _missing_files_error(cfg: DatasetConfig, paths: dict[str, Path], why: str) -> RnnregError:
    folder = paths["train"].parent
    names = ", ".join(p.name for p in paths.values())
    return RnnregError(
        f"{cfg.name} files not found: expected {names} in {folder} ({why}); put the files "
        f"there, or point RNNREG_DATA_DIR (or dataset.data_dir) at the folder that holds "
        f"{cfg.subdir}/, or run once with internet access to download them from {cfg.hf_path}"
    )


def fetch_from_hub(cfg: DatasetConfig, paths: dict[str, Path]) -> None:
    """Download ``cfg``'s splits with ``datasets`` and write them to ``paths`` as text."""
    online = hub_online()
    try:
        import datasets  # imported late: it reads the offline flags at import time
    except ImportError as exc:
        raise _missing_files_error(cfg, paths, "the 'datasets' package is missing") from exc
    datasets.logging.set_verbosity_error()
    try:
        loaded = datasets.load_dataset(cfg.hf_path, cfg.hf_name, revision=cfg.hf_revision)
    except Exception as exc:  # any hub failure means: no files, tell the user where to put them
        why = "the Hugging Face hub is unreachable" if not online else f"download failed: {exc}"
        raise _missing_files_error(cfg, paths, why.splitlines()[0]) from exc
    for split, hf_split in zip(paths, cfg.hf_splits, strict=True):  # train, valid, test
        rows = loaded[hf_split][cfg.hf_column]
        target = paths[split]
        text = "".join(row.rstrip("\n") + "\n" for row in rows)
        try:
            atomic_write_bytes(target, text.encode("utf-8"))
        except RnnregError as exc:
            raise RnnregError(f"{exc}; or set dataset.data_dir to a writable folder") from exc
    log.info("downloaded %s from the hub into %s", cfg.name, paths["train"].parent)
