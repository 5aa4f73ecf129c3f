"""Unpacking a pushed SavedModel archive (tar, tar.gz or zip) without trusting it.

Refused, each with a reason: an archive over the size limit, more members or more unpacked bytes
than allowed (zip bombs), absolute paths, `..` components, links, devices and other special
files, and archives without exactly one SavedModel (`saved_model.pb` at the top or in a single
top-level folder). Members are written one by one with sizes counted as they are read, so a lying
header cannot unpack more than the limit.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

_CHUNK = 1024 * 1024


class ArchiveRefused(ValueError):
    """The archive is unsafe, corrupt or not a SavedModel; the message says why."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_archive_bytes: int
    max_unpacked_bytes: int
    max_members: int


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _safe_relative(name: str) -> PurePosixPath | None:
    """The member's path inside the target, or None for the archive's root entry ('./')."""
    if "\x00" in name:
        raise ArchiveRefused(f"member {name!r}: NUL in its name")
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        raise ArchiveRefused(f"member {name!r}: absolute path")
    parts = [part for part in normalized.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveRefused(f"member {name!r}: '..' in its path")
    if not parts:
        return None
    return PurePosixPath(*parts)


@dataclass(frozen=True)
class _Member:
    path: PurePosixPath
    is_dir: bool
    open: object  # () -> BinaryIO for files


def _tar_members(archive: tarfile.TarFile) -> Iterator[_Member]:
    for info in archive:
        relative = _safe_relative(info.name)
        if info.issym() or info.islnk():
            raise ArchiveRefused(f"member {info.name!r}: links are not allowed")
        if not (info.isfile() or info.isdir()):
            raise ArchiveRefused(f"member {info.name!r}: special files are not allowed")
        if relative is None:
            continue
        if info.isdir():
            yield _Member(relative, True, None)
        else:
            yield _Member(relative, False, lambda info=info: archive.extractfile(info))


def _zip_members(archive: zipfile.ZipFile) -> Iterator[_Member]:
    for info in archive.infolist():
        relative = _safe_relative(info.filename)
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)  # 0 when the zip tool recorded no Unix file type
        if kind and stat.S_ISLNK(mode):
            raise ArchiveRefused(f"member {info.filename!r}: links are not allowed")
        if kind and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ArchiveRefused(f"member {info.filename!r}: special files are not allowed")
        if relative is None:
            continue
        yield _Member(relative, info.is_dir(), lambda info=info: archive.open(info))


def _write_members(members: Iterator[_Member], target: Path, limits: ArchiveLimits) -> None:
    count = 0
    unpacked = 0
    for member in members:
        count += 1
        if count > limits.max_members:
            raise ArchiveRefused(f"more than {limits.max_members} members")
        destination = target.joinpath(*member.path.parts)
        # Belt and braces: after normalisation the path must still be inside the target.
        if not destination.resolve().is_relative_to(target.resolve()):
            raise ArchiveRefused(f"member {member.path}: escapes the target folder")
        if member.is_dir:
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        if destination.exists():
            raise ArchiveRefused(f"member {member.path}: appears twice")
        source: BinaryIO = member.open()  # type: ignore[operator]
        with source, open(destination, "xb") as sink:
            while chunk := source.read(_CHUNK):
                unpacked += len(chunk)
                if unpacked > limits.max_unpacked_bytes:
                    raise ArchiveRefused(f"unpacks to more than {limits.max_unpacked_bytes} bytes")
                sink.write(chunk)


def _saved_model_root(target: Path) -> Path:
    if (target / "saved_model.pb").is_file():
        return target
    children = [child for child in target.iterdir() if not child.name.startswith("__MACOSX")]
    if len(children) == 1 and children[0].is_dir() and (children[0] / "saved_model.pb").is_file():
        return children[0]
    raise ArchiveRefused(
        "no saved_model.pb at the archive's top level or in its single top-level folder"
    )


def unpack_saved_model(archive_path: str | Path, target: str | Path, limits: ArchiveLimits) -> Path:
    """Unpack into the (new, empty) folder `target`; return the SavedModel folder inside it.

    Raises ArchiveRefused. The caller removes `target` on failure."""
    archive_path = Path(archive_path)
    target = Path(target)
    size = archive_path.stat().st_size
    if size > limits.max_archive_bytes:
        raise ArchiveRefused(f"archive is {size} bytes, more than {limits.max_archive_bytes}")
    if size == 0:
        raise ArchiveRefused("archive is empty")
    target.mkdir(parents=True, exist_ok=False)
    try:
        if zipfile.is_zipfile(archive_path):
            with zipfile.ZipFile(archive_path) as zipped:
                _write_members(_zip_members(zipped), target, limits)
        else:
            try:
                tarred = tarfile.open(archive_path, mode="r:*")  # noqa: SIM115
            except (tarfile.TarError, OSError, EOFError) as error:
                raise ArchiveRefused(f"not a tar(.gz) or zip archive ({error})") from None
            with tarred:
                _write_members(_tar_members(tarred), target, limits)
    except ArchiveRefused:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise ArchiveRefused(f"corrupt archive ({type(error).__name__}: {error})") from None
    return _saved_model_root(target)


def pack_saved_model(saved_model_dir: str | Path, archive_path: str | Path) -> Path:
    """A tar.gz of a SavedModel folder (its content at the archive's top level): what
    `push_model` uploads when given a folder, and what tests push."""
    saved_model_dir = Path(saved_model_dir)
    archive_path = Path(archive_path)
    with tarfile.open(archive_path, "w:gz") as archive:
        for root, dirs, files in os.walk(saved_model_dir):
            dirs.sort()
            for name in sorted(files):
                full = Path(root) / name
                archive.add(full, arcname=str(full.relative_to(saved_model_dir)), recursive=False)
    return archive_path


def remove_tree(path: str | Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
