"""``model.tar.gz``: what SageMaker downloads and extracts into /opt/ml/model.

The archive is deterministic (sorted members, fixed mtimes, owner 0, no gzip
timestamp), so the same model directory always gives the same bytes and sha256, and it
carries ``hilt-package.json`` with the sha256 of every file, checked on extraction.
Extraction uses tarfile's ``data`` filter: no absolute paths, no ``..``, no links out.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zlib
from pathlib import Path

from hilt.core.errors import UserError
from hilt.core.layout import require_model_dir
from hilt.core.outputs import file_sha256, os_error_message

PACKAGE_MANIFEST = "hilt-package.json"
FIXED_MTIME = 0
# What an archive may unpack to, at most, unless the caller says otherwise (a 70B model in
# bf16 is ~140 GB): checked against the members' sizes before a byte is written.
DEFAULT_MAX_UNPACKED_BYTES = 256 * 1024**3



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
    require_model_dir(model_dir, "--model-dir", hint="pass a model directory (e.g. a job's model/)")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; pass the archive's file name, e.g. {out / 'model.tar.gz'}")
    out = out.resolve()
    tmp = out.with_name(f".{out.name}.tmp")
    # An archive written inside the model dir is not part of the model (nor its temp file).
    own = {out, tmp}
    files = sorted(p for p in model_dir.rglob("*")
                   if p.is_file() and p.name != PACKAGE_MANIFEST and p.resolve() not in own)
    for path in model_dir.rglob("*"):
        if path.is_symlink():
            raise UserError(f"{path}: symbolic links cannot be packaged; copy the file in instead")
    manifest = {"format": "hilt-package/1",
                "files": {str(p.relative_to(model_dir)): file_sha256(p) for p in files},
                "bytes": {str(p.relative_to(model_dir)): p.stat().st_size for p in files}}
    manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=FIXED_MTIME) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_tar_info(PACKAGE_MANIFEST, len(manifest_bytes)), io.BytesIO(manifest_bytes))
            for path in files:
                with path.open("rb") as handle:
                    tar.addfile(_tar_info(str(path.relative_to(model_dir)), path.stat().st_size), handle)
        tmp.replace(out)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(os_error_message(err, out)) from None
    return {**manifest, "archive_sha256": file_sha256(out), "archive": str(out)}


def _read_manifest(tar: tarfile.TarFile, archive: Path) -> dict:
    member = next((m for m in tar.getmembers() if m.name == PACKAGE_MANIFEST), None)
    if member is None:
        raise UserError(f"{archive}: no {PACKAGE_MANIFEST} inside, so its files cannot be verified; "
                        "build the archive with `hilt package build`")
    try:
        manifest = json.loads(tar.extractfile(member).read().decode("utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{archive}: {PACKAGE_MANIFEST} is not a hilt package manifest (JSON with 'files'); "
                        "rebuild the archive with `hilt package build`") from None
    return manifest


def extract_model_tar(archive: Path, dest: Path, require_manifest: bool = True,
                      max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES) -> dict:
    """Extract safely into ``dest`` and check every file against the manifest inside.

    Before anything is written: the members' total size must be under
    ``max_unpacked_bytes`` (a small archive can expand to fill a disk), and, with a
    manifest, every member must be listed in it with the size it gives. After: every
    listed file must be there with its sha256.

    Args:
        require_manifest: False for archives SageMaker made of /opt/ml/model (they have
            no hilt manifest); then only the size cap and the safe-extraction filter apply.

    Raises:
        UserError: on a missing archive, an unsafe or unlisted member, a size over the cap,
            a missing or malformed manifest, or a file whose hash differs.
    """
    if not archive.is_file():
        raise UserError(f"--model-tar {archive}: no such file")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():  # unsafe names and links: refused before anything else
                tarfile.data_filter(member, str(dest))
            members = [m for m in tar.getmembers() if m.isfile()]
            total = sum(m.size for m in members)
            if total > max_unpacked_bytes:
                raise UserError(f"{archive}: unpacks to {total} bytes, over the limit of {max_unpacked_bytes} "
                                f"({archive.stat().st_size} bytes packed); raise --max-unpacked-gb if the model "
                                "really is that large")
            manifest = _read_manifest(tar, archive) if require_manifest or any(
                m.name == PACKAGE_MANIFEST for m in members) else None
            if manifest is not None:
                sizes = manifest.get("bytes") or {}
                for member in members:
                    if member.name == PACKAGE_MANIFEST:
                        continue
                    if member.name not in manifest["files"]:
                        raise UserError(f"{archive}: {member.name} is not listed in {PACKAGE_MANIFEST}; an archive "
                                        "must hold exactly the files it was built with (rebuild it)")
                    if member.name in sizes and sizes[member.name] != member.size:
                        raise UserError(f"{archive}: {member.name} is {member.size} bytes, but {PACKAGE_MANIFEST} "
                                        f"says {sizes[member.name]}; the archive was altered (rebuild it)")
            dest.mkdir(parents=True, exist_ok=True)
            tar.extractall(dest, filter="data")
    except UserError:
        raise
    except (tarfile.FilterError, tarfile.ReadError, EOFError, zlib.error, OSError) as err:
        raise UserError(f"{archive}: cannot be extracted safely ({err}); rebuild it with `hilt package build`") from None
    if manifest is None:
        return {"files": {}, "verified": False}
    for rel, digest in manifest["files"].items():
        path = dest / rel
        if not path.is_file() or file_sha256(path) != digest:
            raise UserError(f"{archive}: {rel} does not match its sha256 in {PACKAGE_MANIFEST}; the archive is corrupt")
    return {**manifest, "verified": True}
