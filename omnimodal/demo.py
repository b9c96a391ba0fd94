"""Demo data: each active modality's plugin builds its own set, once, under a shared root."""

from __future__ import annotations

import fcntl
import json
import logging
from contextlib import contextmanager
from pathlib import Path

from omnimodal.errors import ConfigError

log = logging.getLogger(__name__)


def qa_record(part: dict, question: str, answer: str, kind: str) -> dict:
    """One demo record: a user turn with a media ``part`` and a question, then the answer."""
    return conversation_record(part, [(question, answer)], kind)


def conversation_record(part: dict, turns: list[tuple[str, str]], kind: str | None = None) -> dict:
    """One multi-turn demo record about one medium: ``part`` opens the first user turn, then
    each ``(question, answer)`` of ``turns`` is a user turn and its assistant answer.

    Training on it asks every question with the medium encoded once (as LLaVA's instruction
    data does); every answer is labelled. ``kind`` is left out when ``None``.
    """
    if not turns:
        raise ValueError("conversation_record: no turns")
    messages = []
    for i, (question, answer) in enumerate(turns):
        content = [part, {"type": "text", "text": question}] if i == 0 else [{"type": "text", "text": question}]
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    return {"messages": messages} if kind is None else {"kind": kind, "messages": messages}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """Write ``records`` one JSON object per line; return ``path``."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@contextmanager
def file_lock(path: Path):
    """An exclusive inter-process lock (so DDP ranks or parallel runs build data once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare_demo(modalities: list[str], root: str | Path, seed: int = 0) -> dict[str, list[Path]]:
    """Build (or reuse) the demo data of each modality; return split -> JSONL files."""
    from omnimodal.plugins import get_registry
    from omnimodal.specs import import_object

    registry = get_registry()
    root = Path(root).expanduser().resolve()
    files: dict[str, list[Path]] = {"train": [], "val": [], "test": []}
    for name in modalities:
        spec = registry.demos.get(name)
        if spec is None:
            raise ConfigError(
                f"modality {name!r} supplies no demo data (its plugin has no omnimodal_demo_data hook); "
                "give data.train/data.val/data.test files"
            )
        target = root / f"{name}-v{spec.version}-seed{seed}"
        manifest = target / "manifest.json"
        with file_lock(root / f".{name}.lock"):
            if not manifest.is_file():
                log.info("building %s demo data under %s", name, target)
                target.mkdir(parents=True, exist_ok=True)
                paths = import_object(spec.builder)(target, seed)
                manifest.write_text(json.dumps({k: str(Path(v).relative_to(target)) for k, v in paths.items()}))
        for split, rel in json.loads(manifest.read_text()).items():
            files.setdefault(split, []).append(target / rel)
    return files
