"""Uploaded query images: size, pixel count and format are checked before anything is decoded.

An image file can declare far more pixels than its bytes suggest (a 20 KB PNG of 13,000 x 13,000 pixels
decodes to half a gigabyte): the header is read first and the upload refused when it declares more than
``max_pixels``, or is more elongated than :data:`~vlret.data.images.MAX_ASPECT_RATIO` to 1 (a narrow strip
resized to a model's input size would take gigabytes). Only the formats listed in :data:`ACCEPTED_FORMATS` are ever opened, so no file reaches
Pillow's other plugins (EPS, for one, would call Ghostscript); the format is decided by the bytes, never
by the type the client declares.
"""

from __future__ import annotations

import io
import warnings

from fastapi import HTTPException, UploadFile
from PIL import Image, UnidentifiedImageError

from vlret.data.image_files import MAX_IMAGE_PIXELS, size_problem

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
MAX_UPLOAD_BYTES = 10 * 2**20
MAX_UPLOAD_PIXELS = MAX_IMAGE_PIXELS  # a 50-megapixel photo; decoded RGB it takes 150 MB


def read_upload(
    upload: UploadFile, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS
) -> Image.Image:
    """The upload decoded to RGB, or an HTTPException (413, 415 or 400) that says what was wrong. The
    format is read from the bytes, whatever type the client declared (browsers and tools send
    ``application/octet-stream`` for WebP, BMP or TIFF)."""
    data = upload.file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise HTTPException(413, f"upload larger than {max_bytes} bytes")
    if not data:
        raise HTTPException(400, "empty upload")
    accepted = ", ".join(ACCEPTED_FORMATS)
    try:
        with warnings.catch_warnings():  # Pillow warns above its own limit; ours is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)  # reads the header only
    except Image.DecompressionBombError:  # Pillow's own ceiling, far above ours: refused all the same
        raise HTTPException(413, f"the image declares more pixels than the limit of {max_pixels}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise HTTPException(
            415, f"the upload is not a readable image in an accepted format ({accepted})"
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise HTTPException(
            413, f"the image declares {width} x {height} = {width * height} pixels; the limit is {max_pixels}"
        )
    problem = size_problem(width, height)  # the limits every image in vlret has (aspect ratio, pixels)
    if problem:
        raise HTTPException(413 if width * height > MAX_IMAGE_PIXELS else 400, problem)
    try:
        image.load()
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise HTTPException(
            400, f"the upload could not be decoded as a {image.format} image (truncated or corrupt)"
        ) from None
