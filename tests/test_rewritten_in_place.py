"""Caches of what a file holds miss when the file is rewritten in place (issue 34, section 4): same path,
same inode, same size and even the same modification time put back, other bytes. Each cache keyed by a
file's identity or content: the file digest memo, the tar member table, the frame cache's key, VISA's
media key and its offline parser, and the teacher features' cache."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlret.data._io import file_digest, file_identity


def rewrite_in_place(path: Path, data: bytes, keep_mtime: bool = True) -> None:
    """Overwrite ``path``'s bytes through the same inode; the size must not change; with ``keep_mtime``
    the modification time is put back as a copy tool that keeps times would."""
    before = path.stat()
    assert len(data) == before.st_size, "a rewrite in place at the same size"
    with open(path, "r+b") as fh:
        fh.write(data)
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    assert (after.st_mtime_ns == before.st_mtime_ns) == keep_mtime


def _bmp(colour: tuple[int, int, int], corner: int) -> bytes:
    """A white 32 x 32 BMP with a filled square of ``colour`` at ``(corner, corner)``: every such file
    has one byte length (BMP does not compress)."""
    pixels = np.full((32, 32, 3), 255, np.uint8)
    pixels[corner : corner + 10, corner : corner + 10] = colour
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "BMP")
    return buffer.getvalue()


@pytest.mark.parametrize("keep_mtime", [True, False])
def test_the_digest_memo_follows_a_file_rewritten_in_place(tmp_path, keep_mtime):
    path = tmp_path / "x.bin"
    path.write_bytes(b"a" * 64)
    first, key = file_digest(path), file_identity(path)
    rewrite_in_place(path, b"b" * 64, keep_mtime)
    assert file_identity(path) != key
    assert file_digest(path) != first
    assert file_digest(path) == __import__("hashlib").sha256(b"b" * 64).hexdigest()


def test_a_file_is_known_by_itself_not_by_the_path_it_is_reached_by(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"a" * 64)
    (tmp_path / "link.bin").symlink_to(path)
    (tmp_path / "sub").mkdir()
    assert file_identity(tmp_path / "link.bin") == file_identity(path)
    assert file_identity(tmp_path / "sub" / ".." / "x.bin") == file_identity(path)
    copy = tmp_path / "copy.bin"
    copy.write_bytes(path.read_bytes())
    assert file_identity(copy) != file_identity(path)  # another file with the same bytes: another inode


def test_the_tar_member_table_follows_a_tar_rewritten_in_place(tmp_path):
    from vlret.data.tar_members import read_member

    def tar_bytes(names: list[str]) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name in names:
                info = tarfile.TarInfo(name)
                info.size, info.mtime = 3, 0
                tar.addfile(info, io.BytesIO(name[:3].encode()))
        return buffer.getvalue()

    old, new = tar_bytes(["aaa.txt", "bbb.txt"]), tar_bytes(["bbb.txt", "ccc.txt"])
    assert len(old) == len(new)
    path = tmp_path / "shard.tar"
    path.write_bytes(old)
    assert read_member(path, "aaa.txt") == b"aaa"
    rewrite_in_place(path, new)
    assert read_member(path, "ccc.txt") == b"ccc"  # a stale table has no ccc.txt
    assert read_member(path, "bbb.txt") == b"bbb"  # and would read aaa's bytes at bbb's old offset


def test_the_frame_cache_key_follows_a_clip_rewritten_in_place(tmp_path):
    from vlret.data.video import FrameSampling, content_key

    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\x00" * 256)
    sampling = FrameSampling()
    first = content_key(path, sampling)
    rewrite_in_place(path, b"\x01" * 256)
    assert content_key(path, sampling) != first


def test_visa_keys_and_parses_an_image_rewritten_in_place_as_a_new_one(tmp_path):
    from vlret.rerank.backends.synthetic import ShapeSceneParser, parse_media
    from vlret.rerank.visa.config import VisaConfig
    from vlret.rerank.visa.pipeline import Roles, Visa

    red, blue = _bmp((220, 20, 20), 2), _bmp((20, 20, 220), 18)
    path = tmp_path / "item.bmp"
    path.write_bytes(red)
    config = VisaConfig(k=2)
    visa = Visa(config, Roles.from_config(config), cache_dir=tmp_path / "cache")
    parser = ShapeSceneParser(1)
    key, parsed = visa._media_key(path), parse_media(path, parser)
    assert parsed  # the square is found
    rewrite_in_place(path, blue)
    assert visa._media_key(path) != key  # the same Visa: a long-running service
    assert parse_media(path, parser) != parsed


def test_teacher_features_of_an_image_since_rewritten_in_place_are_refused(synth_data, tmp_path):
    from vlret.data import load_dataset
    from vlret.errors import DataError
    from vlret.train.teacher import Teacher, TeacherTowers, write_teacher_features

    root = tmp_path / "data"
    shutil.copytree(synth_data.parent, root)
    train = load_dataset(root / synth_data.name).split("train")
    towers = TeacherTowers(batch_size=32)  # the shipped towers
    out = tmp_path / "teacher"
    write_teacher_features(train, "train", out, towers, progress=False)
    Teacher.from_cache(out, train, "train")  # as written, it loads
    image = train.media_path(train.items[0])
    data = bytearray(image.read_bytes())
    data[-20] ^= 0xFF  # one byte of the image data (the CRC no longer fits: content, not validity, matters)
    rewrite_in_place(image, bytes(data))
    with pytest.raises(DataError, match="other image content"):
        Teacher.from_cache(out, train, "train")
    manifest = json.loads((out / "teacher.json").read_text())
    del manifest["images"]  # a cache written before the images were recorded still loads
    (out / "teacher.json").write_text(json.dumps(manifest))
    assert np.isfinite(Teacher.from_cache(out, train, "train").image).all()
