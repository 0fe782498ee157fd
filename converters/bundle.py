"""The bundle: one directory with one artifact, `manifest.json` and (for ImageNet heads) `labels.txt`.

Bundles are what verify, bench and the sample apps consume. Writing is atomic: everything is built in a
hidden staging directory beside the destination and renamed into place only when it is complete, so an
interrupted or failed conversion never leaves a half-written bundle where a user would find it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import EdgevitError

MANIFEST = "manifest.json"
LABELS = "labels.txt"
SCHEMA_VERSION = 1


@dataclass
class Bundle:
    path: Path
    manifest: dict

    @property
    def artifact(self) -> Path:
        return self.path / self.manifest["artifact"]["file"]

    @property
    def target(self) -> str:
        return self.manifest["target"]


def artifact_digest(path: Path) -> tuple[int, str]:
    """(size in bytes, sha256) of a file, or of a directory artifact (.mlpackage) over its sorted files."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest, size = hashlib.sha256(), 0
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
    return size, digest.hexdigest()


def check_destination(out_dir: Path, force: bool) -> None:
    """Fail before any work if the bundle cannot be written where asked."""
    if out_dir.exists() and not force:
        raise EdgevitError(f"{out_dir} already exists; pass --force to replace it, or choose another --out.")
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgevitError(f"{out_dir} exists and is not a directory.")
    # Probe the nearest existing folder instead of creating the missing ones: a later check that fails
    # (calibration data, an unsupported recipe) must not leave empty folders behind.
    existing = out_dir.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a directory")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".edgevit-write-test-"):
            pass
    except OSError as exc:
        raise EdgevitError(f"cannot write bundles under {out_dir.parent}: {exc.strerror or exc}. "
                           "Choose a writable --out.") from None


@contextmanager
def staged_bundle(out_dir: Path, force: bool = False, keep_failed: bool = False) -> Iterator[Path]:
    """Yield a staging directory; on success it becomes `out_dir`, on failure it is removed.

    With `keep_failed`, a failed bundle is kept as `<out_dir>.failed` (its manifest says why) for debugging.
    """
    out_dir = Path(out_dir)
    check_destination(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    try:
        yield staging
    except BaseException:
        discard(staging, out_dir, keep_failed)
        raise
    if out_dir.exists():
        retired = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(retired)
        staging.rename(out_dir)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(out_dir)


def discard(bundle: Path, out_dir: Path | None = None, keep_failed: bool = False) -> Path | None:
    """Remove a failed `bundle`, or with `keep_failed` keep it as `<out_dir>.failed` (out_dir: where it would have
    gone, by default where it is). Returns the kept path, or None."""
    bundle = Path(bundle)
    out_dir = Path(out_dir) if out_dir is not None else bundle
    if not keep_failed:
        shutil.rmtree(bundle, ignore_errors=True)
        return None
    failed = out_dir.with_name(out_dir.name + ".failed")
    shutil.rmtree(failed, ignore_errors=True)
    bundle.rename(failed)
    return failed


def write_manifest(directory: Path, manifest: dict) -> Path:
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, **manifest}, indent=1, default=str) + "\n")
    return path


def read_bundle(path: str | os.PathLike) -> Bundle:
    """A bundle directory (or its manifest.json) with a readable manifest and its artifact present."""
    path = Path(path)
    if path.name == MANIFEST:
        path = path.parent
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise EdgevitError(f"{path} is not an edgevit bundle (no {MANIFEST}); create one with `edgevit convert`.")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgevitError(f"{manifest_path} is not valid JSON ({exc}); convert the model again.") from None
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise EdgevitError(f"{manifest_path} has manifest schema {version}; this edgevit reads {SCHEMA_VERSION}. "
                           "Convert the model again with this version.")
    bundle = Bundle(path=path, manifest=manifest)
    if not bundle.artifact.exists():
        raise EdgevitError(f"bundle {path} lacks its artifact {bundle.artifact.name}.")
    return bundle
