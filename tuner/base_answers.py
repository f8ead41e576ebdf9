"""The base's greedy answers to the general prompts, generated once per base and kept.

Every job's checks ask the same built-in prompts of the same base, greedily, so
the answers come out the same each time; generating them was about a third of
the checks after a short job on a CPU. They are kept as JSON in the cache folder
that the gateway names in ``job.json`` (``checks_cache_dir``), keyed by the base's
files (name, size, modification time), the prompts, the answer length and the
transformers version. Without a cache folder, or when it cannot be read or
written, they are generated as before: the cache only ever saves time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tuner.trial_generation import Messages, greedy_answers

# The files that decide what the base answers: its weights, config and tokenizer.
BASE_FILE_PATTERNS = ("*.safetensors", "*.bin", "config.json", "generation_config.json", "tok*")


def cache_key(base_dir: Path, prompts: list[Messages], max_new_tokens: int) -> str:
    import transformers

    digest = hashlib.sha256()
    digest.update(json.dumps([prompts, max_new_tokens, transformers.__version__]).encode())
    for pattern in BASE_FILE_PATTERNS:
        for path in sorted(base_dir.glob(pattern)):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:32]


def base_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[Messages],
    max_new_tokens: int,
    base_dir: Path,
    cache_dir: Path | None,
) -> list[str]:
    """The base's greedy answers to ``prompts``: from the cache when it has them."""
    cached = read_cached(prompts, max_new_tokens, base_dir, cache_dir)
    if cached is not None:
        return cached
    answers = greedy_answers(model, tokenizer, prompts, max_new_tokens, adapter=False)
    keep(answers, prompts, max_new_tokens, base_dir, cache_dir)
    return answers


def read_cached(
    prompts: list[Messages], max_new_tokens: int, base_dir: Path, cache_dir: Path | None
) -> list[str] | None:
    """The kept answers, or None (nothing kept, no cache folder, an unreadable file)."""
    if cache_dir is None:
        return None
    return _read(_path(prompts, max_new_tokens, base_dir, cache_dir), len(prompts))


def keep(
    answers: list[str],
    prompts: list[Messages],
    max_new_tokens: int,
    base_dir: Path,
    cache_dir: Path | None,
) -> None:
    if cache_dir is not None:
        _write(_path(prompts, max_new_tokens, base_dir, cache_dir), answers)


def _path(prompts: list[Messages], max_new_tokens: int, base_dir: Path, cache_dir: Path) -> Path:
    return cache_dir / f"base-answers-{cache_key(base_dir, prompts, max_new_tokens)}.json"


def _read(path: Path, count: int) -> list[str] | None:
    try:
        answers = json.loads(path.read_text(encoding="utf-8"))["answers"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(answers, list) or len(answers) != count:
        return None
    return answers if all(isinstance(a, str) for a in answers) else None


def _write(path: Path, answers: list[str]) -> None:
    """Whole or not at all: a job that reads the file never sees half of it."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"answers": answers}), encoding="utf-8")
        os.replace(partial, path)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
