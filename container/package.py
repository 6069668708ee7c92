"""``model.tar.gz``: what SageMaker downloads and extracts into /opt/ml/model.

The archive is deterministic (sorted members, fixed mtimes, owner 0, no gzip
timestamp), so the same model directory always gives the same bytes and sha256, and it
carries ``hilt-package.json`` with the sha256 of every file, checked on extraction.
Extraction uses tarfile's ``data`` filter: no absolute paths, no ``..``, no links out.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

from hilt.errors import UserError

PACKAGE_MANIFEST = "hilt-package.json"
FIXED_MTIME = 0


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tar_info(name: str, size: int, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_model_tar(model_dir: Path, out: Path) -> dict:
    """Pack ``model_dir`` (files at the archive root, as SageMaker expects) into ``out``.

    Returns:
        The package manifest (file -> sha256, and the archive's own sha256).

    Raises:
        UserError: when the directory is missing or holds no model.
    """
    if not (model_dir / "config.json").is_file():
        raise UserError(f"--model-dir {model_dir}: no config.json; pass a model directory (e.g. a job's model/)")
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.name != PACKAGE_MANIFEST)
    for path in model_dir.rglob("*"):
        if path.is_symlink():
            raise UserError(f"{path}: symbolic links cannot be packaged; copy the file in instead")
    manifest = {"format": "hilt-package/1", "files": {str(p.relative_to(model_dir)): _file_sha256(p) for p in files}}
    manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=FIXED_MTIME) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_tar_info(PACKAGE_MANIFEST, len(manifest_bytes)), io.BytesIO(manifest_bytes))
        for path in files:
            with path.open("rb") as handle:
                tar.addfile(_tar_info(str(path.relative_to(model_dir)), path.stat().st_size), handle)
    tmp.replace(out)
    return {**manifest, "archive_sha256": _file_sha256(out), "archive": str(out)}


def extract_model_tar(archive: Path, dest: Path) -> dict:
    """Extract safely into ``dest`` and check every file against the manifest inside.

    Raises:
        UserError: on a missing archive, an unsafe member, or a file whose hash differs.
    """
    if not archive.is_file():
        raise UserError(f"--model-tar {archive}: no such file")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.FilterError, tarfile.ReadError, EOFError, OSError) as err:
        raise UserError(f"{archive}: cannot be extracted safely ({err}); rebuild it with `hilt package build`") from None
    manifest_path = dest / PACKAGE_MANIFEST
    if not manifest_path.is_file():
        return {"files": {}, "verified": False}
    manifest = json.loads(manifest_path.read_text())
    for rel, digest in manifest["files"].items():
        path = dest / rel
        if not path.is_file() or _file_sha256(path) != digest:
            raise UserError(f"{archive}: {rel} does not match its sha256 in {PACKAGE_MANIFEST}; the archive is corrupt")
    return {**manifest, "verified": True}
