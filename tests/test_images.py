"""Missing and corrupt images give errors naming the file and the item; skip mode drops them with their captions."""

import shutil

import pytest

from vlret.data import load_dataset
from vlret.data.images import check_media, load_image
from vlret.errors import DataError


@pytest.fixture
def broken_copy(synth_data, tmp_path):
    root = tmp_path / "bench"
    shutil.copytree(synth_data.parent, root)
    ds = load_dataset(root / "dataset.json").split("test")
    missing, corrupt = ds.items[0], ds.items[1]
    (root / missing.path).unlink()
    (root / corrupt.path).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return ds, missing, corrupt


def test_missing_image_error(broken_copy):
    ds, missing, _ = broken_copy
    with pytest.raises(DataError) as err:
        check_media(ds)
    assert (
        missing.path in str(err.value)
        and f"item {missing.id!r}" in str(err.value)
        and "not found" in str(err.value)
    )


def test_corrupt_image_error(broken_copy):
    ds, _, corrupt = broken_copy
    with pytest.raises(DataError, match="cannot decode image"):
        load_image(ds.media_path(corrupt), corrupt.id)


def test_skip_drops_items_and_their_captions(broken_copy):
    ds, missing, corrupt = broken_copy
    kept = check_media(ds, on_error="skip")
    assert len(kept.items) == len(ds.items) - 2
    assert len(kept.captions) == len(ds.captions) - 10  # 5 captions each
    assert {missing.id, corrupt.id}.isdisjoint(c.item_id for c in kept.captions)
    reasons = {s.record: s.reason for s in kept.skipped}
    assert any("not found" in r for r in reasons.values()) and any(
        "cannot decode" in r for r in reasons.values()
    )


@pytest.mark.parametrize(
    "width, height, refused",
    [
        (500, 10, False),  # 50:1, the documented limit, is read
        (501, 10, True),
        (10, 500, False),
        (10, 501, True),
        (5000, 10000, False),  # exactly 50 million pixels
        (5000, 10001, True),
        (1, 1, False),
        (0, 10, True),
    ],
)
def test_the_size_limits_are_inclusive_on_both_axes(width, height, refused, tmp_path):
    """Both sides of each limit of the header check (pixels, aspect ratio, empty), and the same verdict
    through the file reader (a PNG that declares the size: its header is read, never its pixels)."""
    from PIL import Image

    from vlret.data.image_files import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS, size_problem

    assert (MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS) == (50, 50_000_000)
    assert (size_problem(width, height) is not None) == refused
    if width * height and width * height <= 5_000:  # small enough to write for real
        path = tmp_path / "x.png"
        Image.new("RGB", (width, height)).save(path)
        if refused:
            with pytest.raises(DataError, match="elongated"):
                load_image(path)
        else:
            assert load_image(path).size == (width, height)
