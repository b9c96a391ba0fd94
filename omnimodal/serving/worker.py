"""One model, many requests: a worker thread takes queued jobs and runs them in batches.

Requests waiting together with the same generation options (and no seed) run as one
left-padded batch; streamed and seeded requests run alone. Nothing is dropped: jobs wait in
the queue until the worker reaches them (the app refuses new ones past ``max_queue``).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from omnimodal.inference import GenerationOptions, Pipeline, Prompt

log = logging.getLogger(__name__)


@dataclass
class Job:
    """A prepared prompt waiting for the model; results go back through ``loop``."""

    prompt: Prompt
    options: GenerationOptions
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future | None = None  # plain requests: resolved with a Completion
    pieces: asyncio.Queue | None = None  # streamed requests: ("piece", str) ... ("end", TextStream)
    cancel: threading.Event = field(default_factory=threading.Event)

    def send(self, kind: str, value: Any) -> None:
        """Hand a result to the event loop (thread-safe)."""
        if self.pieces is not None:
            self.loop.call_soon_threadsafe(self.pieces.put_nowait, (kind, value))
        elif self.future is not None:
            self.loop.call_soon_threadsafe(_settle, self.future, kind, value)


def _settle(future: asyncio.Future, kind: str, value: Any) -> None:
    if future.done():
        return
    if kind == "error":
        future.set_exception(value)
    else:
        future.set_result(value)


class Worker:
    """Runs jobs on ``pipeline`` in a background thread, up to ``max_batch`` at a time."""

    def __init__(self, pipeline: Pipeline, max_batch: int = 8):
        self.pipeline = pipeline
        self.max_batch = max(1, max_batch)
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="omnimodal-worker", daemon=True)
        self.busy = 0

    def start(self) -> None:
        """Start the worker thread."""
        self.thread.start()

    def stop(self) -> None:
        """Let queued jobs finish, then end the thread."""
        self.jobs.put(None)
        self.thread.join(timeout=60)

    @property
    def pending(self) -> int:
        """Jobs waiting or running."""
        return self.jobs.qsize() + self.busy

    def submit(self, job: Job) -> None:
        """Queue a job."""
        self.jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            batch = [job]
            while len(batch) < self.max_batch:
                try:
                    nxt = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.jobs.put(None)
                    break
                batch.append(nxt)
            self.busy = len(batch)
            try:
                for group in _groups(batch):
                    self._run_group(group)
            finally:
                self.busy = 0

    def _run_group(self, group: list[Job]) -> None:
        group = [j for j in group if not j.cancel.is_set()]
        if not group:
            return
        if group[0].pieces is not None:
            self._run_stream(group[0])
            return
        try:
            results = self.pipeline.generate_prompts([j.prompt for j in group], group[0].options)
        except Exception as exc:  # noqa: BLE001 - every error goes back to its request
            log.exception("generation failed")
            for j in group:
                j.send("error", exc)
            return
        for j, result in zip(group, results):
            j.send("result", result)

    def _run_stream(self, job: Job) -> None:
        try:
            stream = self.pipeline.stream_prompt(job.prompt, job.options)
            with stream:
                for piece in stream:
                    if job.cancel.is_set():
                        break
                    job.send("piece", piece)
            job.send("end", stream)
        except Exception as exc:  # noqa: BLE001
            log.exception("streamed generation failed")
            job.send("error", exc)


def _groups(batch: list[Job]) -> list[list[Job]]:
    """Plain jobs with equal options (no seed) share a batch; the others run alone, in order."""
    groups: list[list[Job]] = []
    shared: dict[GenerationOptions, list[Job]] = {}
    for job in batch:
        if job.pieces is not None or job.options.seed is not None:
            groups.append([job])
        elif job.options in shared:
            shared[job.options].append(job)
        else:
            shared[job.options] = [job]
            groups.append(shared[job.options])
    return groups
