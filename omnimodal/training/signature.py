"""What a checkpoint was trained with, so that a resume with something else is refused.

The signature is a flat ``{key: string}`` stored in the checkpoint's hyperparameters: the model
configuration (from ``train.model_signature``), a hash of the tokenizer and the content hash of
every training and validation data file. The media files a data file points at are not hashed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

DATA_SPLITS = ("train", "val")


def tokenizer_hash(tokenizer) -> str:
    """SHA-256 of what decides token ids: vocabulary, merges, added and special tokens, chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)  # runtime settings, not the vocabulary
        spec.pop("padding", None)
    else:  # a tokenizer without a `tokenizers` backend (e.g. SentencePiece): its vocabulary
        spec = sorted(tokenizer.get_vocab().items())
    blob = json.dumps({"tokenizer": spec, "chat_template": tokenizer.chat_template,
                       "special": tokenizer.special_tokens_map}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def file_hash(path: Path) -> str:
    """SHA-256 of a file's bytes; of a directory (a saved dataset, Parquet files), of every file
    in it: relative names and contents, in sorted order."""
    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def data_signature(files: dict[str, list[Path]]) -> dict[str, str]:
    """``data.<split>`` -> the split's files and their content hashes (train and val)."""
    out = {}
    for split in DATA_SPLITS:
        paths = [Path(p) for p in files.get(split) or []]
        out[f"data.{split}"] = json.dumps({"files": [str(p.resolve()) for p in paths], "sha256": [file_hash(p) for p in paths]})
    return out


def _describe_data(key: str, saved: str, current: str) -> str | None:
    old, new = json.loads(saved), json.loads(current)
    if old["sha256"] == new["sha256"]:
        return None  # the same content (perhaps moved): training continues exactly
    if len(old["sha256"]) != len(new["sha256"]):
        return f"{key}: the checkpoint was trained on {old['files']}, this run reads {new['files']}"
    changed = [f"{path} (sha256 {a[:12]}... at the checkpoint, {b[:12]}... now)"
               for path, a, b in zip(new["files"], old["sha256"], new["sha256"]) if a != b]
    return f"{key}: data file changed: {'; '.join(changed)}"


def signature_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One readable line per signature entry that differs.

    A checkpoint from an older omnimodal records no tokenizer or data entries: those are then
    not compared. A model entry on one side only (a modality added or removed) is a change.
    """
    changes = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if a == b:
            continue
        if a is None or b is None:
            if key != "tokenizer" and not key.startswith("data."):
                changes.append(f"{key}: {'not in this run' if b is None else 'not in the checkpoint'}")
            continue
        if key.startswith("data."):
            line = _describe_data(key, a, b)
            if line:
                changes.append(line)
        elif key == "tokenizer":
            changes.append(f"tokenizer: a different vocabulary or chat template (sha256 {a[:12]}... at the checkpoint, "
                           f"{b[:12]}... now)")
        else:
            changes.append(f"{key}: the model configuration differs")
    return changes
