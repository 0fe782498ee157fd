"""Measure on the host runner (`edgevit.bench.worker`): one process per measurement, interleaved.

The same code drives workers on a board: `launch` is the command that starts one (a local Python, or ssh).
"""
from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from ..progress import progress_bar
from .stats import is_unstable, summarize

LOCAL_WORKER = (sys.executable, "-m", "edgevit.bench.worker")
REPLY_TIMEOUT_S = 900  # a full-size model's first load can take minutes on a small board
STDERR_TAIL = 1500


class WorkerDied(Exception):
    pass


class WorkerProcess:
    """A worker process and its JSON-lines conversation; its stderr is kept for error messages."""

    def __init__(self, launch) -> None:
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(list(launch), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self._stderr, text=True, bufsize=1)

    def request(self, message: dict, timeout: float = REPLY_TIMEOUT_S) -> dict:
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerDied(self.death()) from None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                self.process.kill()
                raise WorkerDied(f"no answer within {timeout:.0f} s; the runner was stopped")
        line = self.process.stdout.readline()
        if not line:
            raise WorkerDied(self.death())
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise WorkerDied(f"the runner answered something that is not JSON: {line[:200]!r}") from None

    def death(self) -> str:
        code = self.process.wait(timeout=30)
        signame = f" ({signal.Signals(-code).name})" if code < 0 and -code in signal.valid_signals() else ""
        return f"the runner exited with code {code}{signame}" + (f"; its last output: {self.stderr_tail()}"
                                                                   if self.stderr_tail() else "")

    def stderr_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-STDERR_TAIL:].strip()

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write('{"cmd": "quit"}\n')
                self.process.stdin.close()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
        self._stderr.close()


@dataclass
class Job:
    """One thing to time: a bundle, or the eager PyTorch model behind it (`eager` spec)."""
    measurement: dict
    load: dict
    worker: WorkerProcess | None = None
    samples: list = field(default_factory=list)
    error: str | None = None


def _fail(job: Job, stage: str, message: str) -> None:
    job.error = f"{stage}: {message}"
    if job.worker is not None:
        job.worker.close()
        job.worker = None


def _ask(job: Job, message: dict, stage: str) -> dict | None:
    try:
        answer = job.worker.request(message)
    except WorkerDied as exc:
        _fail(job, stage, str(exc))
        return None
    if not answer.get("ok"):
        _fail(job, stage, answer.get("error", "unknown error"))
        return None
    return answer


def measure(jobs: list[Job], launch, warmup: int, iters: int, threads: int | None, chunk: int = 5,
            log=lambda message: None) -> list[dict]:
    """Load every job in its own worker, warm each up, then time them in turns of `chunk` iterations."""
    for job in jobs:
        job.worker = WorkerProcess(launch)
        answer = _ask(job, {"cmd": "load", "threads": threads, **job.load}, "load")
        if answer:
            job.measurement.update(load_ms=answer["load_ms"], first_inference_ms=answer["first_inference_ms"],
                                   runtime=answer["runtime"], memory_mb=answer["peak_rss_mb"],
                                   memory_kind="peak RSS")
            job.measurement["extra"].update(versions=answer["versions"],
                                            rss_before_load_mb=answer["rss_before_load_mb"])
            log(f"loaded {job.measurement['name']} in {answer['load_ms']:.0f} ms")
    for job in jobs:
        if job.worker and warmup:
            _ask(job, {"cmd": "run", "iters": warmup}, "warm-up")
    turns = 0
    with progress_bar(total=iters * len(jobs), desc="timing", unit="inference") as bar:
        while any(job.worker and len(job.samples) < iters for job in jobs):
            ordered = jobs[turns % len(jobs):] + jobs[:turns % len(jobs)]  # rotate who goes first
            for job in ordered:
                if job.worker and len(job.samples) < iters:
                    answer = _ask(job, {"cmd": "run", "iters": min(chunk, iters - len(job.samples))},
                                  f"timed run, after {len(job.samples)} of {iters} iterations")
                    if answer:
                        job.samples += answer["samples_ms"]
                        job.measurement["memory_mb"] = answer["peak_rss_mb"]
                        bar.update(len(answer["samples_ms"]))
            turns += 1
    for job in jobs:
        if job.worker:
            job.worker.close()
        _finish(job, iters)
    return [job.measurement for job in jobs]


def _finish(job: Job, iters: int) -> None:
    measurement = job.measurement
    measurement["samples_ms"] = job.samples
    measurement["latency_ms"] = summarize(job.samples)
    measurement["error"] = job.error
    if job.error:
        measurement["status"] = "partial" if job.samples else "failed"
    else:
        measurement["status"] = "unstable" if is_unstable(measurement["latency_ms"]) else "ok"
    measurement["extra"]["iterations_done"] = len(job.samples)


def matmul_peak(launch, threads: int | None) -> float | None:
    worker = WorkerProcess(launch)
    try:
        answer = worker.request({"cmd": "matmul_peak", "threads": threads})
        return answer.get("gflops") if answer.get("ok") else None
    except WorkerDied:
        return None
    finally:
        worker.close()
