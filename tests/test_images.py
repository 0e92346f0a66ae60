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
