"""Keep the terminal for edgevit's own lines while the toolchains talk.

coremltools, torchao, litert-torch, ONNX Runtime and ExecuTorch's C++ runtime print warnings, version notices
and progress bars of their own (dozens of lines per conversion), from Python and from C++. They are redirected
at the file-descriptor level into a log file, so a C++ `fprintf(stderr)` lands there too; edgevit's own
messages go to a duplicate of the original stderr taken before the redirect.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TextIO


def console() -> TextIO:
    """A text stream on the terminal stderr that stays there while fds 1 and 2 go to a toolchain log (or
    sys.stderr itself when it is not a file descriptor, e.g. captured by pytest or a notebook: a redirect of
    fds 1 and 2 does not touch it)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.stderr
    return os.fdopen(os.dup(fd), "w", buffering=1)


def redirect_toolchain_output(path: Path) -> tuple[int, int]:
    """Send fds 1 and 2 to `path` (appending); returns the saved originals for `restore_output`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    with open(path, "ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
    return saved


def restore_output(saved: tuple[int, int]) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, original in zip((1, 2), saved):
        os.dup2(original, fd)
        os.close(original)


@contextmanager
def toolchain_output_to(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    saved = redirect_toolchain_output(path)
    try:
        yield
    finally:
        restore_output(saved)
