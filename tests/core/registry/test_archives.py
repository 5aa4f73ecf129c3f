"""Hostile and broken archives are refused with a reason, and nothing lands outside the target."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from core.registry.archives import ArchiveLimits, ArchiveRefused, unpack_saved_model

LIMITS = ArchiveLimits(max_archive_bytes=1_000_000, max_unpacked_bytes=100_000, max_members=50)


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                archive.addfile(info)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def test_a_saved_model_at_the_top_or_in_one_folder_unpacks(tmp_path):
    # given
    flat = _tar(
        tmp_path / "flat.tar.gz", [(_file("saved_model.pb"), b"pb"), (_file("variables/v"), b"x")]
    )
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as archive:
        archive.writestr("model/saved_model.pb", b"pb")
        archive.writestr("model/variables/v", b"x")
    # when
    flat_root = unpack_saved_model(flat, tmp_path / "a", LIMITS)
    nested_root = unpack_saved_model(nested, tmp_path / "b", LIMITS)
    # then
    assert (flat_root / "saved_model.pb").read_bytes() == b"pb"
    assert nested_root == tmp_path / "b" / "model"
    assert (nested_root / "variables" / "v").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("/etc/evil", "absolute path"),
        ("../evil", "'..'"),
        ("model/../../evil", "'..'"),
    ],
)
def test_paths_that_leave_the_target_are_refused(tmp_path, name, reason):
    archive = _tar(tmp_path / "a.tar.gz", [(_file("saved_model.pb"), b"pb"), (_file(name), b"x")])
    with pytest.raises(ArchiveRefused, match=reason):
        unpack_saved_model(archive, tmp_path / "out", LIMITS)
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_links_are_refused(tmp_path, kind):
    link = _file("variables/link")
    link.type = kind
    link.linkname = "/etc/passwd"
    archive = _tar(tmp_path / "a.tar.gz", [(_file("saved_model.pb"), b"pb"), (link, None)])
    with pytest.raises(ArchiveRefused, match="links are not allowed"):
        unpack_saved_model(archive, tmp_path / "out", LIMITS)


def test_zip_symlinks_and_zip_paths_are_refused(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("saved_model.pb", b"pb")
        info = zipfile.ZipInfo("link")
        info.external_attr = 0o120777 << 16
        handle.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveRefused, match="links"):
        unpack_saved_model(archive, tmp_path / "out", LIMITS)
    traversal = tmp_path / "b.zip"
    with zipfile.ZipFile(traversal, "w") as handle:
        handle.writestr("../../evil", b"x")
    with pytest.raises(ArchiveRefused, match=r"'\.\.'"):
        unpack_saved_model(traversal, tmp_path / "out2", LIMITS)


def test_devices_and_fifos_are_refused(tmp_path):
    fifo = _file("fifo")
    fifo.type = tarfile.FIFOTYPE
    archive = _tar(tmp_path / "a.tar.gz", [(_file("saved_model.pb"), b"pb"), (fifo, None)])
    with pytest.raises(ArchiveRefused, match="special files"):
        unpack_saved_model(archive, tmp_path / "out", LIMITS)


def test_size_limits_hold_against_bombs(tmp_path):
    # a small archive that unpacks beyond the limit (zeros compress well)
    bomb = _tar(tmp_path / "bomb.tar.gz", [(_file("saved_model.pb"), b"\0" * 200_000)])
    assert bomb.stat().st_size < 2_000
    with pytest.raises(ArchiveRefused, match="unpacks to more than"):
        unpack_saved_model(bomb, tmp_path / "out", LIMITS)
    many = _tar(tmp_path / "many.tar.gz", [(_file(f"f{i}"), b"x") for i in range(60)])
    with pytest.raises(ArchiveRefused, match="more than 50 members"):
        unpack_saved_model(many, tmp_path / "out2", LIMITS)
    big = tmp_path / "big.tar"
    big.write_bytes(b"\1" * 1_000_001)
    with pytest.raises(ArchiveRefused, match="more than 1000000"):
        unpack_saved_model(big, tmp_path / "out3", LIMITS)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"this is not an archive at all", "not a tar"),
        (b"\x1f\x8b\x08\x00garbage-after-a-gzip-magic", "corrupt|not a tar"),
    ],
)
def test_corrupt_archives_are_refused(tmp_path, content, reason):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(content)
    with pytest.raises(ArchiveRefused, match=reason):
        unpack_saved_model(archive, tmp_path / "out", LIMITS)


def test_a_truncated_archive_is_refused(tmp_path):
    whole = _tar(tmp_path / "a.tar.gz", [(_file("saved_model.pb"), bytes(range(256)) * 300)])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ArchiveRefused):
        unpack_saved_model(cut, tmp_path / "out", LIMITS)


def test_an_archive_without_a_saved_model_is_refused(tmp_path):
    archive = _tar(
        tmp_path / "a.tar.gz", [(_file("a/saved_model.pb"), b"pb"), (_file("b/x"), b"x")]
    )
    with pytest.raises(ArchiveRefused, match=r"no saved_model\.pb"):
        unpack_saved_model(archive, tmp_path / "out", LIMITS)
