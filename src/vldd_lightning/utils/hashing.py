"""Stable content hashes for configurations, files and derived random seeds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def stable_hash(value: Any, length: int = 12) -> str:
    """Hash a JSON-serialisable value independently of dict key order."""
    payload = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:length]


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def derive_seed(*keys: Any) -> int:
    """Derive a 63-bit seed from a base seed and counters, such as (seed, iteration, rank).

    Seeding every step from its own counters makes a resumed run draw exactly what an
    uninterrupted run draws, without saving random generator states.
    """
    payload = ":".join(str(key) for key in keys).encode("utf-8")
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "little") & ((1 << 63) - 1)
