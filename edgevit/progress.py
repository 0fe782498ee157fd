"""Progress bars for long work (downloads, conversions, sweeps); quiet when stderr is not a terminal."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

from tqdm.auto import tqdm


def _disabled() -> bool:
    return os.environ.get("EDGEVIT_NO_PROGRESS") == "1" or not sys.stderr.isatty()


@contextmanager
def progress_bar(total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[tqdm]:
    bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", disable=_disabled(), leave=False)
    try:
        yield bar
    finally:
        bar.close()
