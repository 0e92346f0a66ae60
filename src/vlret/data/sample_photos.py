"""Real photos that installed packages ship, for searching real pictures offline: scikit-learn's two sample
images (always installed with vlret) and scikit-image's (the ``photos`` extra; left out when it is absent).
They are copied under names that say what they show, which no model reads."""

from __future__ import annotations

import shutil
from importlib import resources
from importlib.util import find_spec
from pathlib import Path

#: the name a photo is written under -> (the package that ships it, its path inside the package)
SAMPLE_PHOTOS = {
    "china.jpg": ("sklearn", "datasets/images/china.jpg"),  # a temple by a lake
    "flower.jpg": ("sklearn", "datasets/images/flower.jpg"),
    "astronaut.png": ("skimage", "data/astronaut.png"),
    "cat.png": ("skimage", "data/chelsea.png"),
    "coffee.png": ("skimage", "data/coffee.png"),
    "rocket.jpg": ("skimage", "data/rocket.jpg"),
    "motorcycle.png": ("skimage", "data/motorcycle_left.png"),
}


def write_sample_photos(folder: str | Path) -> list[Path]:
    """Copy the sample photos of the installed packages into ``folder``; returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (package, inside) in SAMPLE_PHOTOS.items():
        if find_spec(package) is None:
            continue
        with resources.as_file(resources.files(package).joinpath(inside)) as source:
            shutil.copyfile(source, folder / name)
        written.append(folder / name)
    return written
