"""Fetch (when online) and tokenize a corpus once, verify checksums, print its sizes.

    python scripts/prepare_data.py                    # PTB from $RNNREG_DATA_DIR or data/
    python scripts/prepare_data.py dataset=wikitext2  # any config override works

A ``SHA256SUMS`` file next to the split files, if present, is checked.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from rnnreg import RnnregError
from rnnreg.config.schema import CONF_DIR, register, to_run_config
from rnnreg.data.corpus import load_corpus, split_paths


def verify_checksums(folder: Path) -> list[str]:
    """Names of the files whose sha256 differs from ``folder/SHA256SUMS``."""
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        return []
    bad = []
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        path = folder / name.lstrip("*")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            bad.append(name)
    return bad


def main(overrides: list[str]) -> int:
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        run = to_run_config(compose("config", overrides=overrides))
    corpus = load_corpus(run.dataset)
    folder = split_paths(run.dataset)["train"].parent
    bad = verify_checksums(folder)
    if bad:
        raise RnnregError(f"checksum mismatch in {folder}: {', '.join(bad)}; fetch the files again")
    print(
        f"{run.dataset.name} in {folder}: vocabulary {corpus.vocab_size}, tokens "
        f"{corpus.train.numel()} / {corpus.valid.numel()} / {corpus.test.numel()}"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except RnnregError as exc:
        print(f"rnnreg: error: {exc}", file=sys.stderr)
        sys.exit(2)
