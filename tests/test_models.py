"""Model registry, seed CNNs, PicNet, timm names, weights loading, pretrained EfficientNet-Lite0, freezing, FLOPs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from picstory.errors import ConfigError
from picstory.models import (
    adapt_first_conv,
    backbone_parameters,
    count_flops,
    create_model,
    default_model,
    has_pretrained,
    head_parameters,
    imagenet_classes,
    list_models,
    load_weights,
    set_backbone_frozen,
)
from picstory.models.registry import picstory_names

torch.set_num_threads(2)


@pytest.mark.parametrize("name", ["seed-mnist-cnn", "seed-cifar-cnn", "picnet-s", "picnet-m", "picnet-l"])
@pytest.mark.parametrize("size", [16, 28, 32, 64])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_every_picstory_model_builds_and_predicts(name, size, in_chans):
    model = create_model(name, num_classes=7, in_chans=in_chans, img_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_chans, size, size))
    assert out.shape == (2, 7)
    cfg = model.picstory_cfg
    assert cfg["arch"] == name and cfg["input_size"] == (in_chans, size, size) and cfg["pretrained"] is False
    assert len(cfg["mean"]) == len(cfg["std"]) == in_chans
    assert isinstance(model.get_submodule(cfg["head"]), nn.Linear)


def test_registry_lists_every_family():
    names = picstory_names()
    assert {"seed-mnist-cnn", "seed-cifar-cnn", "picnet-s", "picnet-m", "picnet-l"} <= set(names)
    assert list_models("picnet") == ["picnet-l", "picnet-m", "picnet-s"]
    assert "resnet18" in list_models("resnet*")


def _layer_types(model: nn.Module) -> list[type]:
    return [type(m) for m in model.children()]


SEED_TYPES = [nn.Conv2d, nn.MaxPool2d, nn.ReLU, nn.Conv2d, nn.MaxPool2d, nn.ReLU, nn.Flatten, nn.Linear, nn.ReLU,
              nn.Dropout, nn.Linear]


def test_seed_mnist_cnn_matches_the_spec():
    model = create_model("seed-mnist-cnn", num_classes=10, in_chans=1, img_size=28)
    assert _layer_types(model) == SEED_TYPES
    assert (model.conv1.in_channels, model.conv1.out_channels, model.conv1.kernel_size) == (1, 10, (3, 3))
    assert model.conv1.padding == "same" and model.conv2.padding == "same"
    assert (model.conv2.in_channels, model.conv2.out_channels) == (10, 32)
    assert model.fc1.in_features == 32 * 7 * 7 and model.fc1.out_features == 100
    assert model.drop.p == pytest.approx(0.3)
    assert (model.fc2.in_features, model.fc2.out_features) == (100, 10)
    assert create_model("seed-mnist-cnn", num_classes=3, in_chans=1, img_size=64).fc1.in_features == 32 * 16 * 16


def test_seed_cifar_cnn_matches_the_spec():
    model = create_model("seed-cifar-cnn", num_classes=10, in_chans=3, img_size=32)
    assert _layer_types(model) == SEED_TYPES
    assert (model.conv1.in_channels, model.conv1.out_channels) == (3, 15)
    assert (model.conv2.in_channels, model.conv2.out_channels) == (15, 45)
    assert model.fc1.in_features == 45 * 8 * 8 and model.fc1.out_features == 100
    assert create_model("seed-cifar-cnn", num_classes=2, in_chans=1, img_size=32).conv1.in_channels == 1


@pytest.mark.parametrize("name,size", [("resnet18", 32), ("mobilenetv3_small_100", 64)])
def test_timm_architectures_by_name(name, size):
    model = create_model(name, num_classes=4, in_chans=1, img_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 4)
    cfg = model.picstory_cfg
    assert cfg["arch"] == name and len(cfg["mean"]) == 1
    assert model.get_submodule(cfg["head"]) is model.get_classifier()


def test_unknown_model_suggests_close_names():
    with pytest.raises(ConfigError, match="picnet-m"):
        create_model("picnet-mm", num_classes=2)
    with pytest.raises(ConfigError, match="resnet18"):
        create_model("resnet-18", num_classes=2)
    with pytest.raises(ConfigError, match="unknown model 'zzqqxx'"):
        create_model("zzqqxx", num_classes=2)


def test_pretrained_without_offline_weights_is_a_config_error():
    with pytest.raises(ConfigError, match=r"efficientnet_lite0.*--weights FILE"):
        create_model("resnet18", num_classes=2, pretrained=True)
    assert has_pretrained("efficientnet_lite0") and not has_pretrained("picnet-s")


def test_load_weights_round_trip_via_safetensors(tmp_path):
    from safetensors.torch import save_file

    src = create_model("picnet-s", num_classes=5, in_chans=1, img_size=28)
    torch.nn.init.normal_(src.fc.weight)
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    dst = create_model("picnet-s", num_classes=5, in_chans=1, img_size=28)
    report = load_weights(dst, tmp_path / "w.safetensors")
    assert report == {"loaded": len(src.state_dict()), "skipped_head": False, "adapted_first_conv": False}
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k


def test_load_weights_accepts_wrappers_and_prefixes(tmp_path):
    src = create_model("seed-mnist-cnn", num_classes=3, in_chans=1, img_size=28)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "w.pt")
    dst = create_model("seed-mnist-cnn", num_classes=3, in_chans=1, img_size=28)
    load_weights(dst, tmp_path / "w.pt")
    assert torch.equal(src.conv1.weight, dst.conv1.weight)


def test_load_weights_skips_a_head_of_other_classes(tmp_path):
    src = create_model("picnet-s", num_classes=10, in_chans=1, img_size=28)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = create_model("picnet-s", num_classes=3, in_chans=1, img_size=28)
    fresh_head = dst.fc.weight.clone()
    report = load_weights(dst, tmp_path / "w.pt")
    assert report["skipped_head"] and torch.equal(dst.fc.weight, fresh_head)
    assert torch.equal(dst.stem[0].weight, src.stem[0].weight)
    with pytest.raises(ConfigError, match=r"mis-shaped: fc\.weight"):
        load_weights(dst, tmp_path / "w.pt", strict_head=True)


def test_load_weights_lists_the_keys_that_do_not_fit(tmp_path):
    state = create_model("seed-mnist-cnn", num_classes=3, in_chans=1, img_size=28).state_dict()
    state["conv2.weight"] = torch.zeros(32, 10, 5, 5)
    state["extra.weight"] = torch.zeros(1)
    del state["fc1.bias"]
    torch.save(state, tmp_path / "bad.pt")
    dst = create_model("seed-mnist-cnn", num_classes=3, in_chans=1, img_size=28)
    with pytest.raises(ConfigError) as err:
        load_weights(dst, tmp_path / "bad.pt")
    msg = str(err.value)
    assert "1 missing: fc1.bias" in msg and "1 unexpected: extra.weight" in msg
    assert "mis-shaped: conv2.weight (32, 10, 5, 5)≠(32, 10, 3, 3)" in msg


def test_load_weights_refuses_pickled_objects_and_missing_files(tmp_path):
    torch.save({"model": nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # a module, not a state dict
    model = create_model("seed-mnist-cnn", num_classes=3, in_chans=1, img_size=28)
    with pytest.raises(ConfigError, match="pickled.pt"):
        load_weights(model, tmp_path / "pickled.pt")
    with pytest.raises(ConfigError, match="not found"):
        load_weights(model, tmp_path / "nope.safetensors")


def test_one_channel_adaptation_sums_the_rgb_filters():
    rgb = create_model("picnet-s", num_classes=4, in_chans=3, img_size=28)
    grey = create_model("picnet-s", num_classes=4, in_chans=1, img_size=28)
    state, adapted = adapt_first_conv(rgb.state_dict(), grey)
    assert adapted
    expected = rgb.state_dict()["stem.0.weight"].sum(dim=1, keepdim=True)
    assert torch.allclose(state["stem.0.weight"], expected)
    same, adapted = adapt_first_conv(grey.state_dict(), grey)
    assert not adapted and torch.equal(same["stem.0.weight"], grey.state_dict()["stem.0.weight"])


def test_freeze_toggles_backbone_only_and_keeps_its_batchnorm_in_eval():
    model = create_model("picnet-s", num_classes=4, in_chans=1, img_size=28)
    head, backbone = head_parameters(model), backbone_parameters(model)
    assert head == list(model.fc.parameters()) and len(backbone) + len(head) == len(list(model.parameters()))
    set_backbone_frozen(model, True)
    assert all(not p.requires_grad for p in backbone) and all(p.requires_grad for p in head)
    model.train()
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    model(torch.randn(4, 1, 28, 28) + 3.0)
    assert not bn.training and torch.equal(bn.running_mean, before)
    set_backbone_frozen(model, False)
    assert all(p.requires_grad for p in model.parameters()) and bn.training
    model(torch.randn(4, 1, 28, 28) + 3.0)
    assert not torch.equal(bn.running_mean, before)


def test_count_flops_of_seed_mnist_cnn_by_hand():
    model = create_model("seed-mnist-cnn", num_classes=10, in_chans=1, img_size=28)
    macs = (28 * 28 * 10 * 9 * 1      # conv1 at 28×28
            + 14 * 14 * 32 * 9 * 10   # conv2 at 14×14 after the first pool
            + 32 * 7 * 7 * 100        # fc1
            + 100 * 10)               # fc2
    assert count_flops(model, (1, 28, 28)) == 2 * macs
    assert count_flops(create_model("picnet-m", 10, 1, img_size=28), (1, 28, 28)) > 2 * macs


def test_imagenet_classes_are_the_standard_list():
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert classes[:2] == ["tench", "goldfish"] and classes[-1] == "toilet tissue"
    assert classes[281] == "tabby" and classes[967] == "espresso"


def test_default_model_choice():
    assert default_model(28, 70_000, 1).startswith("picnet-")
    assert default_model(32, 500, 3) == "picnet-s"
    assert default_model(224, 2_000, 3) == "efficientnet_lite0"


def _imagenet_input(image) -> torch.Tensor:
    """resize 256 (shorter side) + centre crop 224 + ImageNet normalisation, the standard evaluation transform."""
    import torchvision.transforms.functional as TF
    from PIL import Image

    x = TF.to_tensor(Image.fromarray(image))
    x = TF.center_crop(TF.resize(x, 256, antialias=True), 224)
    return TF.normalize(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))[None]


@pytest.fixture(scope="module")
def lite0():
    return create_model("efficientnet_lite0", num_classes=1000, in_chans=3, pretrained=True).eval()


@pytest.mark.parametrize("sample,expected", [("chelsea", {"tabby", "tiger cat", "Egyptian cat"}),
                                              ("coffee", {"espresso", "cup", "coffee mug"})])
def test_efficientnet_lite0_pretrained_recognises_sample_photos(lite0, sample, expected):
    import skimage.data

    with torch.no_grad():
        top5 = lite0(_imagenet_input(getattr(skimage.data, sample)())).topk(5).indices[0].tolist()
    names = [imagenet_classes()[i] for i in top5]
    assert expected & set(names[:2]), names
    cfg = lite0.picstory_cfg
    assert cfg["pretrained"] and cfg["mean"] == (0.485, 0.456, 0.406) and cfg["head"] == "classifier"


def test_efficientnet_lite0_pretrained_for_new_classes_and_grey(lite0):
    model = create_model("efficientnet_lite0", num_classes=5, in_chans=1, pretrained=True)
    assert model.classifier.out_features == 5 and model.conv_stem.in_channels == 1
    assert torch.allclose(model.conv_stem.weight, lite0.conv_stem.weight.sum(1, keepdim=True))
    assert torch.equal(model.bn2.weight, lite0.bn2.weight)
    assert len(model.picstory_cfg["mean"]) == 1
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 64, 64)).shape == (1, 5)


def test_pretrained_mapping_verifies_shapes():
    from picstory.models.pretrained import map_by_position

    a = {"x.weight": torch.zeros(2, 3), "x.bias": torch.zeros(2)}
    assert list(map_by_position(a, {"y.weight": torch.ones(2, 3), "y.bias": torch.ones(2)}, "w")) == ["y.weight",
                                                                                                        "y.bias"]
    with pytest.raises(ConfigError, match="x.weight"):
        map_by_position(a, {"y.weight": torch.ones(3, 3), "y.bias": torch.ones(2)}, "w")
    with pytest.raises(ConfigError, match="2 tensors in the file, 1 in the model"):
        map_by_position(a, {"y.weight": torch.ones(2, 3)}, "w")
