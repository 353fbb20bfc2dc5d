"""Tests for src.models: every conf/model/*.yaml builds and runs, small-input stems, seeded init, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

import src.models.zoo  # noqa: F401  (registers the meminf_* names with timm, which build_model does not need)
from src.config.compose import compose_config, plain
from src.errors import ModelError
from src.models.build import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_CONF_DIR = REPO_ROOT / "conf" / "model"
CONFIG_KEYS = {"name", "timm_name", "small_input_stem", "small_input_max_px", "kwargs", "pack_default", "init"}

CIFAR = (3, 32, 32)
# (config name, input shape, classes): each model at the sizes it is meant for.
FORWARD_CASES = [
    ("mlp", (784,), 10),
    ("mlp", (1, 28, 28), 10),
    ("linear", (256,), 10),
    ("cnn_small", (1, 8, 8), 10),
    ("cnn_small", (1, 28, 28), 10),
    ("cnn_small", CIFAR, 100),
    ("resnet18", CIFAR, 100),
    ("resnet50", CIFAR, 100),
    ("densenet_bc100", CIFAR, 100),
    ("inception_small", CIFAR, 100),
    ("mobilenetv2", CIFAR, 100),
    ("resnet18", (3, 224, 224), 10),
    ("inception_v3", (3, 75, 75), 10),  # its smallest input
    ("vit_small", CIFAR, 100),
]
IMAGE_MODELS = ["cnn_small", "resnet18", "resnet50", "densenet_bc100", "inception_small", "mobilenetv2",
                "inception_v3", "vit_small"]


def load_config(name: str, **overrides: Any) -> DictConfig:
    """conf/model/<name>.yaml as Hydra composes it (its schema's defaults filled in), as a plain config so that
    the tests can hand build_model keys the schema would refuse."""
    return OmegaConf.merge(OmegaConf.create(plain(compose_config([f"model={name}"]).model)), overrides)


def seeded_build(name: str, input_shape: tuple[int, ...], seed: int, **overrides: Any) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(load_config(name, **overrides), input_shape, num_classes=10)


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def test_every_config_file_has_a_forward_case() -> None:
    assert {path.stem for path in MODEL_CONF_DIR.glob("*.yaml")} == {name for name, _, _ in FORWARD_CASES}


@pytest.mark.parametrize("path", sorted(MODEL_CONF_DIR.glob("*.yaml")), ids=lambda path: path.stem)
def test_config_file_follows_schema(path: Path) -> None:
    assert OmegaConf.load(path).defaults[0] == "base_model"  # its types and shared defaults
    cfg = load_config(path.stem)
    assert set(cfg) == CONFIG_KEYS
    assert cfg.name == path.stem
    assert timm.is_model(cfg.timm_name)
    assert cfg.small_input_stem in (True, False, "auto")


@pytest.mark.parametrize(("name", "input_shape", "num_classes"), FORWARD_CASES)
def test_forward_gives_logits(name: str, input_shape: tuple[int, ...], num_classes: int) -> None:
    model = build_model(load_config(name), input_shape, num_classes)
    batch = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    logits = model(batch)
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()


def test_plain_mapping_config_builds() -> None:
    cfg = {"name": "mlp", "timm_name": "meminf_mlp", "kwargs": {"hidden": [16]}}
    model = build_model(cfg, (1, 4, 4), num_classes=3)
    assert [layer.out_features for layer in model.modules() if isinstance(layer, nn.Linear)] == [16, 3]


@pytest.mark.parametrize(
    ("name", "conv_path", "pool_path", "stem_channels"),
    [
        ("resnet18", "conv1", "maxpool", 64),
        ("resnet50", "conv1", "maxpool", 64),
        ("densenet_bc100", "features.conv0", "features.pool0", 24),
        ("mobilenetv2", "conv_stem", None, 32),
    ],
)
def test_small_stem_replaces_stride2_stem_at_32px(
    name: str, conv_path: str, pool_path: str | None, stem_channels: int
) -> None:
    model = build_model(load_config(name), CIFAR, num_classes=100)
    conv = model.get_submodule(conv_path)
    assert (conv.kernel_size, conv.stride, conv.out_channels) == ((3, 3), (1, 1), stem_channels)
    if pool_path is not None:
        assert isinstance(model.get_submodule(pool_path), nn.Identity)


@pytest.mark.parametrize(
    ("name", "conv_path", "fan"),
    [
        ("resnet18", "conv1", 64 * 9),  # fan_out, as ResNet.init_weights
        ("densenet_bc100", "features.conv0", 3 * 9),  # fan_in, as DenseNet.__init__
        ("mobilenetv2", "conv_stem", 32 * 9),  # fan_out, as timm's _init_weight_goog
    ],
)
def test_small_stem_conv_gets_the_model_family_init(name: str, conv_path: str, fan: int) -> None:
    weight = seeded_build(name, CIFAR, seed=0).get_submodule(conv_path).weight
    # kaiming_normal_ with ReLU gain: std sqrt(2 / fan); torch's default conv init would give 1 / sqrt(3 * fan_in).
    assert weight.std().item() == pytest.approx((2 / fan) ** 0.5, rel=0.15)


@pytest.mark.parametrize(
    ("small_input_stem", "pixels", "expect_small_stem"),
    [("auto", 32, True), ("auto", 64, True), ("auto", 96, False), ("auto", 224, False),
     (False, 32, False), (True, 96, True)],
)
def test_small_stem_rule(small_input_stem: bool | str, pixels: int, expect_small_stem: bool) -> None:
    cfg = load_config("resnet18", small_input_stem=small_input_stem)
    model = build_model(cfg, (3, pixels, pixels), num_classes=10)
    if expect_small_stem:
        assert (model.conv1.kernel_size, model.conv1.stride) == ((3, 3), (1, 1))
        assert isinstance(model.maxpool, nn.Identity)
    else:
        assert (model.conv1.kernel_size, model.conv1.stride) == ((7, 7), (2, 2))
        assert isinstance(model.maxpool, nn.MaxPool2d)


def test_densenet_bc100_structure() -> None:
    model = build_model(load_config("densenet_bc100"), CIFAR, num_classes=10)
    blocks = [module for name, module in model.features.named_children() if name.startswith("denseblock")]
    assert [len(block) for block in blocks] == [16, 16, 16]
    for block in blocks:
        for layer in block.values():
            assert (layer.conv1.out_channels, layer.conv2.out_channels) == (4 * 12, 12)  # bn_size * k, k
    # Compression 0.5: 24 + 16 * 12 = 216 -> 108; 108 + 192 = 300 -> 150; 150 + 192 = 342 features.
    transitions = [model.features.transition1.conv, model.features.transition2.conv]
    assert [(conv.in_channels, conv.out_channels) for conv in transitions] == [(216, 108), (300, 150)]
    assert model.get_classifier().in_features == 342
    # Depth 100 = stem conv + 3 * 16 * 2 convs in dense layers + 2 transition convs + classifier.
    assert sum(isinstance(module, nn.Conv2d | nn.Linear) for module in model.modules()) == 100
    # 769,210 parameters for 10 classes (800,080 for CIFAR-100); Huang et al. 2017 report 0.8M.
    assert parameter_count(model) == 769_210


def test_inception_small_structure() -> None:
    model = build_model(load_config("inception_small"), CIFAR, num_classes=10)
    module_names = [type(module).__name__ for module in model.modules()]
    assert (module_names.count("InceptionModule"), module_names.count("DownsampleModule")) == (8, 2)
    first_conv = next(module for module in model.modules() if isinstance(module, nn.Conv2d))
    assert (first_conv.kernel_size, first_conv.stride, first_conv.out_channels) == ((3, 3), (1, 1), 96)
    assert model.head.in_features == 176 + 160
    # Zhang et al. 2017 (Table 1) list 1,649,402 parameters for CIFAR-10. Their BatchNorm has no learned
    # scale; PyTorch's has one per channel: 1,712 ConvModule channels in all.
    bn_scales = sum(module.weight.numel() for module in model.modules() if isinstance(module, nn.BatchNorm2d))
    assert (bn_scales, parameter_count(model) - bn_scales) == (1_712, 1_649_402)


@pytest.mark.parametrize(
    ("name", "input_shape"),
    [("mlp", (784,)), ("cnn_small", (1, 28, 28)), ("resnet18", CIFAR), ("densenet_bc100", CIFAR),
     ("inception_small", CIFAR), ("mobilenetv2", CIFAR)],
)
def test_init_is_determined_by_seed(name: str, input_shape: tuple[int, ...]) -> None:
    first, again, other = (seeded_build(name, input_shape, seed).state_dict() for seed in (0, 0, 1))
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_forward_check_draws_no_random_numbers_and_keeps_train_mode() -> None:
    torch.manual_seed(0)
    model = build_model(load_config("resnet18"), (3, 224, 224), num_classes=10)
    rng_after_build = torch.get_rng_state()
    torch.manual_seed(0)
    timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=3)
    assert torch.equal(rng_after_build, torch.get_rng_state())
    assert model.training
    assert model.bn1.num_batches_tracked.item() == 0


def test_registration_happens_on_import_and_is_idempotent() -> None:
    script = (
        "import importlib, warnings, timm, src.models.zoo\n"
        "names = ['meminf_cnn_small', 'meminf_densenet_bc100', 'meminf_inception_small', 'meminf_mlp']\n"
        "assert timm.list_models('meminf_*') == names, timm.list_models('meminf_*')\n"
        "with warnings.catch_warnings():\n"
        "    warnings.simplefilter('error')\n"
        "    importlib.reload(src.models.zoo)\n"
        "assert timm.list_models('meminf_*') == names\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, check=True, capture_output=True, timeout=60)


@pytest.mark.parametrize(("name", "shape"), [("mlp", (784,)), ("cnn_small", (1, 8, 8)), ("inception_small", CIFAR)])
def test_meminfs_own_models_build_as_through_timm_without_importing_it(name: str, shape: tuple[int, ...]) -> None:
    from src.models.init import apply_init

    cfg = load_config(name)
    torch.manual_seed(0)
    native = build_model(cfg, shape, num_classes=10)
    rng_after_native = torch.get_rng_state()
    inputs = {"in_features": 784} if name == "mlp" else {"in_chans": shape[0]}
    torch.manual_seed(0)
    through_timm = timm.create_model(cfg.timm_name, pretrained=False, num_classes=10, **inputs,
                                     **OmegaConf.to_container(cfg.kwargs))
    apply_init(through_timm, cfg.get("init", "default"), name)
    assert type(native) is type(through_timm) and torch.equal(rng_after_native, torch.get_rng_state())
    ours, theirs = native.state_dict(), through_timm.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[key], theirs[key]) for key in ours)
    script = ("import sys\nfrom src.config.compose import compose_config\nfrom src.models.build import build_model\n"
              f"build_model(compose_config(['model={name}']).model, {shape!r}, 10)\n"
              "assert 'timm' not in sys.modules, 'timm was imported'\n")
    subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, check=True, capture_output=True, timeout=120)


def assert_one_line_model_error(excinfo: pytest.ExceptionInfo[ModelError], *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_model_on_vectors_says_use_mlp(name: str) -> None:
    with pytest.raises(ModelError) as excinfo:
        build_model(load_config(name), (20,), num_classes=10)
    assert_one_line_model_error(excinfo, f"'{name}'", "(20,)", "model=mlp")


def test_unknown_timm_name_is_named() -> None:
    with pytest.raises(ModelError) as excinfo:
        build_model(load_config("resnet18", timm_name="no_such_net"), CIFAR, num_classes=10)
    assert_one_line_model_error(excinfo, "'no_such_net'")


@pytest.mark.parametrize(
    ("name", "small_input_stem", "input_shape", "fix"),
    [
        # ImageNet stem + 3 dense blocks: 8 -> 4 (conv0) -> 2 (pool0) -> 1 -> 0 (transition avg-pools).
        ("densenet_bc100", False, (3, 8, 8), "small_input_stem=true"),
        ("densenet_bc100", "auto", (3, 2, 2), "model=inception_small"),
        # Two 2x2 max-pools: 3 -> 1 -> 0.
        ("cnn_small", False, (1, 3, 3), "model=inception_small"),
    ],
)
def test_input_too_small_is_caught_at_build(
    name: str, small_input_stem: bool | str, input_shape: tuple[int, ...], fix: str
) -> None:
    with pytest.raises(ModelError) as excinfo:
        build_model(load_config(name, small_input_stem=small_input_stem), input_shape, num_classes=10)
    assert_one_line_model_error(excinfo, f"'{name}'", str(input_shape), fix)


def test_small_stem_fix_suggested_for_densenet_works() -> None:
    model = build_model(load_config("densenet_bc100", small_input_stem=True), (3, 8, 8), num_classes=10)
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    ("name", "overrides", "fragment"),
    [
        ("resnet18", {"small_input_stm": True}, "unknown keys ['small_input_stm']"),
        ("resnet18", {"small_input_stem": "yes"}, "small_input_stem is 'yes'"),
        ("resnet18", {"kwargs": {"num_classes": 5}}, "['num_classes'] are set by build_model"),
        ("resnet18", {"kwargs": {"hidden": [5]}}, "unexpected keyword argument 'hidden'"),
        ("resnet18", {"kwargs": {"stem_type": "deep"}, "small_input_stem": True}, "not a single conv"),
        ("mlp", {"small_input_stem": True}, "small_input_stem=false"),
        ("inception_small", {"kwargs": {"downsample_channels": [80]}}, "downsample_channels needs 2"),
    ],
)
def test_bad_model_config_is_a_model_error(name: str, overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ModelError) as excinfo:
        build_model(load_config(name, **overrides), CIFAR, num_classes=10)
    assert_one_line_model_error(excinfo, fragment)


def test_config_without_timm_name_is_a_model_error() -> None:
    with pytest.raises(ModelError) as excinfo:
        build_model({"name": "resnet18"}, CIFAR, num_classes=10)
    assert_one_line_model_error(excinfo, "lacks keys ['timm_name']")


@pytest.mark.parametrize("input_shape", [(3, 32, 32), (1, 16, 24)])
def test_vit_img_size_follows_the_data(input_shape: tuple[int, ...]) -> None:
    model = build_model(load_config("vit_small", kwargs={"depth": 2}), input_shape, num_classes=10)
    grid = (input_shape[1] // 4, input_shape[2] // 4)
    assert tuple(model.patch_embed.img_size) == input_shape[1:] and tuple(model.patch_embed.grid_size) == grid
    assert model.pos_embed.shape[1] == grid[0] * grid[1] + 1  # one per patch and the class token
    assert len(model.blocks) == 2
    assert model(torch.zeros(3, *input_shape)).shape == (3, 10)


@pytest.mark.parametrize(
    ("overrides", "input_shape", "fragment"),
    [
        ({"kwargs": {"depth": 1}}, (3, 30, 30), "patch_size (4, 4) does not divide the 30x30 images"),
        ({"kwargs": {"depth": 1, "img_size": 224}}, CIFAR, "kwargs.img_size is set from the data (32x32)"),
    ],
)
def test_vit_size_mismatch_is_refused(overrides: dict[str, Any], input_shape: tuple[int, ...],
                                      fragment: str) -> None:
    with pytest.raises(ModelError) as excinfo:
        build_model(load_config("vit_small", **overrides), input_shape, num_classes=10)
    assert_one_line_model_error(excinfo, fragment)


def test_inception_v3_refuses_inputs_below_75px() -> None:
    with pytest.raises(ModelError) as excinfo:
        build_model(load_config("inception_v3"), (3, 74, 74), num_classes=10)
    assert_one_line_model_error(excinfo, "'inception_v3'", "(3, 74, 74)", "use larger inputs")
