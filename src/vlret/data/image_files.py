"""Reading one image file: fully decoded, in RGB, refused before decoding when its header declares too
many pixels or too elongated a shape, and read from inside a tar shard when its path points there."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vlret.data.tar_members import read_member, tar_member
from vlret.errors import DataError

_READ_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError)

#: the largest image decoded anywhere (uploads, collections, datasets): a 50-megapixel photo, 150 MB as RGB
MAX_IMAGE_PIXELS = 50_000_000
#: the most elongated image accepted: resizing the short side to a model's input size makes the long side
#: this many times longer (a 200,000 x 1 strip of 0.2 MP would otherwise become gigabytes at 224 px)
MAX_ASPECT_RATIO = 50


def size_problem(width: int, height: int) -> str | None:
    """Why an image of ``width x height`` (as its header declares) is refused before decoding, or None."""
    if width < 1 or height < 1:
        return f"the image declares {width} x {height} pixels"
    if width * height > MAX_IMAGE_PIXELS:
        return f"the image declares {width} x {height} = {width * height} pixels; the limit is {MAX_IMAGE_PIXELS}"
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        return (
            f"the image is {width} x {height} pixels, more elongated than {MAX_ASPECT_RATIO}:1; resized for a "
            "model it would take far more memory than its pixels"
        )
    return None


def load_image(path: str | Path, record: str | None = None) -> Image.Image:
    """Open an image fully decoded, in RGB; a missing, corrupt, oversized or extremely elongated file
    raises :class:`DataError` (checked from the header, before anything is decoded). A path inside a tar
    file (``SHARD.tar/MEMBER``) reads that member."""
    path = Path(path)
    source: Path | io.BytesIO = path
    if not path.is_file():
        inside = tar_member(path)
        if inside is None:
            raise DataError(path, record, "image file not found")
        source = io.BytesIO(read_member(*inside))
    try:
        with warnings.catch_warnings():  # Pillow warns above its own limit; ours is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                problem = size_problem(*img.size)
                if problem:
                    raise DataError(path, record, f"refused: {problem}")
                img.load()
                return img.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise DataError(path, record, f"refused: {exc}") from None
    except _READ_ERRORS as exc:
        raise DataError(path, record, f"cannot decode image ({exc})") from None
