"""open_clip's model zoo through the factory; runs where the ``openclip`` extra is installed."""

import pytest
import torch

from vlret.errors import ConfigError
from vlret.models import create_model, load_model
from vlret.models.registry import is_model_reference


def test_names_are_model_references_and_a_missing_extra_is_a_clear_error(monkeypatch):
    assert is_model_reference("openclip:ViT-B-32/openai")
    import builtins

    real_import = builtins.__import__

    def no_open_clip(name, *args, **kwargs):
        if name == "open_clip":
            raise ImportError("not installed")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_open_clip)
    with pytest.raises(ConfigError, match=r"pip install 'vlret\[openclip\]'"):
        create_model("openclip:ViT-B-32/")


def test_untrained_architecture_encodes_saves_and_loads(tmp_path):
    pytest.importorskip(
        "open_clip", reason="the openclip extra is not installed (pip install 'vlret[openclip]')"
    )
    from PIL import Image

    model = create_model("openclip:RN50/").eval()  # no tag: built untrained, nothing downloaded
    pixels = torch.from_numpy(model.image_transform(Image.new("RGB", (300, 200), "red")))[None]
    batch = model.tokenize(["a red circle"])
    with torch.no_grad():
        image, text = model.encode_images(pixels).embeds, model.encode_texts(batch).embeds
    assert image.shape == text.shape
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_images(pixels).embeds, image)
