"""data.name: text: a UTF-8 file or folder tokenized on first use into a cache, then read as data.name: tokens
reads a `tokenize` directory (docs/language-models.md). For corpora small enough to tokenize at start; tokenize
large ones once with `python -m hvdtrain tokenize`.

The cache entry is named by a hash of what decides its tokens: the files (paths, sizes, modification times), the
tokenizer, its vocabulary size and data.val_fraction. A rank that finds it missing takes a lock file beside it;
the first to hold the lock tokenizes (written whole or not at all: tokenize's hidden directory, then a rename),
the others wait on the lock and then read what it wrote. Locks are per file system: on a shared one that does
not honour them, let one job tokenize first (or run `tokenize` yourself).

data.path may start with {stdlib}: the folder of Python's own standard library (sysconfig's "stdlib"), a corpus
every machine with Python has (the example configs/lm-python.yaml trains on its email package).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sysconfig
from pathlib import Path
from typing import Any

from hvdtrain.errors import DataError
from hvdtrain.text.tokenizer import META_FILE, TOKENIZER_FILE

STDLIB = "{stdlib}"


def corpus_path(path: str | None) -> Path:
    """data.path with {stdlib} filled in; refuses a missing path."""
    if not path:
        raise DataError("data.path is required for data.name=text: set data.path to a UTF-8 file or a folder of them")
    resolved = Path(path.replace(STDLIB, sysconfig.get_paths()["stdlib"]))
    if not resolved.exists():
        raise DataError(f"data.path={path} does not exist: set data.path to a UTF-8 file or a folder of them")
    return resolved


def cache_root(cfg: Any) -> Path:
    """data.cache_dir, or $XDG_CACHE_HOME/hvdtrain/text (~/.cache/hvdtrain/text)."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hvdtrain" / "text"


def cache_entry(cfg: Any) -> Path:
    """The token directory of this corpus and tokenizer (see the module docstring)."""
    from hvdtrain.commands.tokenize import corpus_files

    files = corpus_files([corpus_path(cfg.path)])
    key = json.dumps({"files": [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files],
                      "tokenizer": cfg.tokenizer, "vocab_size": cfg.vocab_size, "val_fraction": cfg.val_fraction})
    return cache_root(cfg) / hashlib.sha256(key.encode()).hexdigest()[:16]


def text_tokens(cfg: Any) -> Path:
    """The cached token directory of data.path, tokenized first by whichever rank takes the lock."""
    from hvdtrain.commands.tokenize import tokenize_corpus

    entry = cache_entry(cfg)
    if (entry / META_FILE).is_file() and (entry / TOKENIZER_FILE).is_file():
        return entry
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        lock = open(entry.parent / f".{entry.name}.lock", "w")  # noqa: SIM115 - held until the entry exists
    except OSError as exc:
        raise DataError(f"data.cache_dir {entry.parent} cannot be written ({exc.strerror}): set data.cache_dir to "
                        "a writable folder") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (entry / META_FILE).is_file():
            tokenize_corpus([corpus_path(cfg.path)], entry, cfg.tokenizer, cfg.vocab_size, cfg.val_fraction)
    return entry


def token_directory(cfg: Any) -> Path:
    """The token directory a data.name=tokens or text config reads."""
    return text_tokens(cfg) if cfg.name == "text" else Path(cfg.path)
