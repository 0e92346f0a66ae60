"""CoOp's prompt learner on vlret's tiny dual encoder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlret.errors import ConfigError
from vlret.models import create_model
from vlret.models.coop import PromptLearner

#: two float32 computations of one unit-length embedding of width 24 (a few rounding steps of 6e-8 each)
#: agree to well within this; a wrong projection or pooling is off by orders of magnitude more
FLOAT32_PROJECTION_ATOL = 1e-5
CLASSES = ["red circle", "blue square", "green_triangle"]


def _model():
    torch.manual_seed(0)
    captions = ["a photo of a red circle.", "a blue square", "a green triangle"]
    return create_model("tiny-vit", captions=captions).eval()


def test_before_training_the_class_embeddings_are_the_plain_prompts():
    model = _model()
    learner = PromptLearner(model, CLASSES)
    assert learner.n_ctx == 4
    with torch.no_grad():
        plain = model.encode_texts(model.tokenize([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES]))
        torch.testing.assert_close(learner.class_embeddings(model), F.normalize(plain.embeds, dim=-1))


def test_only_the_context_learns():
    model = _model()
    model.requires_grad_(False)
    learner = PromptLearner(model, CLASSES)
    learner.class_embeddings(model).sum().backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        # A random step, not a constant one: layer norm ignores a shift shared by every feature.
        learner.ctx.add_(torch.randn(learner.ctx.shape, generator=torch.Generator().manual_seed(1)))
    before = F.normalize(model.encode_texts(model.tokenize(["a photo of a red circle."])).embeds, dim=-1)
    assert not torch.allclose(learner.class_embeddings(model)[0], before[0])


def test_a_model_whose_text_tower_takes_no_embeddings_is_refused():
    model = create_model("composed", image_tower="tiny-vit", text_tower="minilm", embed_dim=8)
    with pytest.raises(ConfigError, match="input embeddings"):
        PromptLearner(model, CLASSES)


def test_local_tokens_are_the_image_pass_and_attention_rows_sum_to_one():
    model = _model()
    pixels = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        tokens, attention = model.local_tokens(pixels)
        plain = model.encode_images(pixels)
    torch.testing.assert_close(tokens[:, 0], plain.embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens[:, 1:], plain.tokens, atol=1e-5, rtol=0)
    cfg = model.cfg
    assert attention.shape == (3, (cfg.image_size // cfg.patch_size) ** 2)
    # independently: the last block's attention from its projection weights, per head, then averaged
    trunk = model.image_encoder
    with torch.no_grad():
        x = trunk.input_tokens(pixels)
        for layer in trunk.blocks.layers[:-1]:
            x = layer(x)
        last = trunk.blocks.layers[-1]
        h = last.norm1(x)
        width, heads = h.shape[-1], last.self_attn.num_heads
        q, k, _ = (h @ last.self_attn.in_proj_weight.T + last.self_attn.in_proj_bias).split(width, dim=-1)
        q = q.view(3, -1, heads, width // heads).transpose(1, 2)
        k = k.view(3, -1, heads, width // heads).transpose(1, 2)
        weights = torch.softmax(q @ k.transpose(-1, -2) / (width // heads) ** 0.5, dim=-1).mean(1)
    torch.testing.assert_close(attention, weights[:, 0, 1:], atol=1e-5, rtol=0)


def test_alpha_zero_is_coop_and_textrefiner_is_image_independent_at_test():
    from vlret.losses.textrefiner import prompt_losses
    from vlret.models.prompt_classifier import PromptClassifier, RefinerConfig

    model = _model()
    coop = PromptClassifier(model, CLASSES).eval()
    zero = PromptClassifier(model, CLASSES, refiner=RefinerConfig(alpha=0.0)).eval()
    pixels = torch.randn(4, 3, 64, 64)
    torch.testing.assert_close(coop.logits(pixels), zero.logits(pixels))
    refiner = PromptClassifier(model, CLASSES, refiner=RefinerConfig(alpha=0.2)).train()
    labels = torch.tensor([0, 1, 2, 0])
    before = refiner.cache.entries.clone()
    terms = prompt_losses(refiner, pixels, labels)
    terms["total"].backward()
    assert set(terms) == {"ce", "semantic", "regulariser", "total"}
    assert not torch.equal(refiner.cache.entries, before)  # written after the losses
    assert refiner.prompts.ctx.grad is not None and refiner.alignment.first.weight.grad is not None
    refiner.eval()
    together = refiner.logits(pixels)
    one_by_one = torch.cat([refiner.logits(pixels[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=0)
    classes = refiner.class_embeddings()
    refiner.logits(torch.randn(2, 3, 64, 64))
    assert refiner.class_embeddings() is classes  # computed once per class list at test time


def test_new_classes_keep_the_learnt_context():
    from vlret.models.prompt_classifier import PromptClassifier

    model = _model()
    classifier = PromptClassifier(model, CLASSES[:2])
    with torch.no_grad():
        classifier.prompts.ctx.add_(0.5)
    classifier.set_classes(CLASSES[2:])
    assert classifier.prompts.classnames == ["green_triangle"]
    plain = PromptLearner(model, CLASSES[2:])
    torch.testing.assert_close(classifier.prompts.ctx, plain.ctx + 0.5)


def test_prompts_on_an_hf_clip_reproduce_its_text_features(tmp_path):
    from hf_tiny import make_clip
    from vlret.models import create_model

    model = create_model(f"hf:{make_clip(tmp_path / 'clip')}").eval()
    classes = ["red circle", "blue square"]
    learner = PromptLearner(model, classes, init="a red")  # words the tiny vocabulary knows
    with torch.no_grad():
        plain = model.encode_texts(model.tokenize([f"a red {c}." for c in classes]))
        torch.testing.assert_close(
            learner.class_embeddings(model), F.normalize(plain.embeds, dim=-1), atol=1e-5, rtol=0
        )


# ----- transformers CLIP and SigLIP: local tokens, prompts, per-word context ----------------------------


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    from hf_tiny import make_clip, make_siglip
    from vlret.models import create_model

    root = tmp_path_factory.mktemp("hf_prompts")
    return {
        "clip": create_model(f"hf:{make_clip(root / 'clip')}").eval(),
        "siglip": create_model(f"hf:{make_siglip(root / 'siglip')}").eval(),
        "clip_folder": root / "clip",
    }


def test_clip_local_tokens_are_its_image_embedding_and_last_cls_attention(hf_models):
    from transformers import CLIPModel

    model = hf_models["clip"]
    pixels = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        tokens, attention = model.local_tokens(pixels)
        embeds = model.encode_images(pixels).embeds
        # independently: transformers' eager attention, which returns its weights
        eager = CLIPModel.from_pretrained(hf_models["clip_folder"], attn_implementation="eager").eval()
        weights = eager.vision_model(pixel_values=pixels, output_attentions=True).attentions[-1]
    assert tokens.shape == (3, 1 + 16, 24) and attention.shape == (3, 16)
    # the attention first: it must be checked even where the embedding comparison below fails
    torch.testing.assert_close(attention, weights.mean(dim=1)[:, 0, 1:], atol=1e-6, rtol=0)
    # two computations of one value (a batched projection of every token, encode_images' of the pooled one):
    # float32 rounding in a width-24 reduction differs by a few 1e-7 between kernels (2.4e-7 seen on AVX-512)
    torch.testing.assert_close(tokens[:, 0], embeds, atol=FLOAT32_PROJECTION_ATOL, rtol=0)


def test_siglip_local_tokens_are_the_pooling_of_each_token_alone(hf_models):
    model = hf_models["siglip"]
    vision = model.model.vision_model
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        tokens, attention = model.local_tokens(pixels)
        hidden = vision(pixel_values=pixels).last_hidden_state
        alone = torch.stack([vision.head(hidden[:, i : i + 1]) for i in range(16)], dim=1)
        probe = vision.head.probe.expand(2, -1, -1)
        _, weights = vision.head.attention(probe, hidden, hidden, need_weights=True)
    torch.testing.assert_close(attention, weights[:, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(tokens[:, 1:], alone, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        tokens[:, 0], model.encode_images(pixels).embeds, atol=FLOAT32_PROJECTION_ATOL, rtol=0
    )


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_prompts_reproduce_the_text_features_of_clip_and_siglip(hf_models, kind):
    model = hf_models[kind]
    classes = ["red circle", "blue square"]
    learner = PromptLearner(model, classes, init="a red")  # words the tiny vocabulary knows
    # CLIP's tokenizer puts a start token in front, SigLIP's does not
    assert (learner.start, learner.n_ctx) == ((1, 2) if kind == "clip" else (0, 2))
    with torch.no_grad():
        plain = model.encode_texts(model.tokenize([f"a red {c}." for c in classes]))
        torch.testing.assert_close(
            learner.class_embeddings(model), F.normalize(plain.embeds, dim=-1), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("context, n_ctx", [("per_word", 4), ("per_token", 5)])
def test_context_per_word_as_coop_or_per_token(tmp_path, context, n_ctx):
    from hf_tiny import make_clip, subword_tokenizer
    from vlret.models import create_model

    model = create_model(f"hf:{make_clip(tmp_path / 'clip', subword_tokenizer())}").eval()
    # "a photo of a" -> [CLS] a ph ##oto of a [SEP]: four words, five tokens. CoOp (per word) learns four
    # vectors from the first four tokens (a, ph, ##oto, of) and keeps the fifth ("a") frozen in the prompt.
    ids = model.tokenize(["a photo of a red circle."])["input_ids"][0]
    assert ids.tolist()[:7] == [2, 4, 5, 6, 7, 4, 8]
    learner = PromptLearner(model, ["red circle"], "a photo of a", context)
    assert learner.n_ctx == n_ctx
    with torch.no_grad():
        embeddings = model.text_token_embeddings(ids[None])[0]
        assert torch.equal(learner.ctx, embeddings[1 : 1 + n_ctx])
        learner.ctx.add_(1.0)  # move the learnt vectors: only they change, the rest stays the frozen prompt
        prompt = learner.prompt_embeddings()[0]
    assert torch.equal(prompt[1 : 1 + n_ctx], embeddings[1 : 1 + n_ctx] + 1.0)
    assert torch.equal(prompt[1 + n_ctx :], embeddings[1 + n_ctx :]) and torch.equal(prompt[0], embeddings[0])
    with pytest.raises(ConfigError, match="context must be one of per_word, per_token"):
        PromptLearner(model, ["red circle"], "a photo of a", "per_phrase")


def test_a_context_phrase_is_read_as_coops_released_code_reads_it():
    """CoOp's released code: ``ctx_init.replace("_", " ")`` and ``n_ctx = len(ctx_init.split(" "))``.
    "a_photo_of_a" is four words there (our earlier reading gave one); a phrase with an empty word would
    take the end-of-text token as a context word, so it is refused."""
    model = _model()
    classes = ["red circle", "blue square"]
    underscored = PromptLearner(model, classes, init="a_red")
    spaced = PromptLearner(model, classes, init="a red")
    assert underscored.n_ctx == spaced.n_ctx == 2 and underscored.init == "a red"
    torch.testing.assert_close(underscored.class_embeddings(model), spaced.class_embeddings(model))
    for phrase in ("a  red", "a__red", "a_red_", " a red", "_"):
        with pytest.raises(ConfigError, match="empty word|no words"):
            PromptLearner(model, classes, init=phrase)
