"""src/models/grouped.py: a grouped pack against the P separate models it is built from (forward, a step, the
eval forward), for the families and the layers it fuses; tests/test_packing.py trains them through the job."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d
from torch import nn

from src.config.compose import compose_config
from src.models.build import build_model
from src.models.grouped import GroupedPack

# The same tolerances as tests/test_packing.py: fused kernels sum in another order than the single ones
ATOL, RTOL = 2e-4, 1e-3
PACK = 3  # odd, so that a block layout mixed up between members cannot line up by chance


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread while another process shares the 2 cores: 2 threads made these tests ~8x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def configured(overrides: list[str]) -> Callable[[], nn.Module]:
    cfg = compose_config(overrides)
    return lambda: build_model(cfg.model, (3, 32, 32), 10)


def depthwise() -> nn.Module:
    """mobilenetv2's layers: a depthwise conv (groups=C) and timm's BatchNorm subclass with its activation."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), BatchNormAct2d(8),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), BatchNormAct2d(8),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


MODELS: dict[str, Callable[[], Callable[[], nn.Module]]] = {
    "cnn_small": lambda: configured(["model=cnn_small", "model.kwargs.channels=[8,8]", "model.kwargs.hidden=16"]),
    "resnet18": lambda: configured(["model=resnet18", "model.small_input_stem=true", "+model.kwargs.stem_width=8",
                                    "+model.kwargs.channels=[8,16,16,16]"]),
    "depthwise": lambda: depthwise,
}


def seeded_models(name: str) -> list[nn.Module]:
    build = MODELS[name]()
    models = []
    for seed in range(PACK):
        torch.manual_seed(seed)
        models.append(build().train())
    return models


# Both shipped optimizers (conf/optim), with weight decay, over two steps so that momentum and Adam's moments act
OPTIMIZERS = {"sgd": (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}),
              "adamw": (torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 0.01})}
STEPS = 2


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.usefixtures("one_thread")
def test_grouped_pack_equals_the_separate_models(name: str, channels_last: bool, optimizer: str) -> None:
    """Forward, two steps of one optimizer over the pack against P optimizers, and the eval forward after them:
    the packed loss is the sum of the members' mean losses, so an elementwise optimizer is P independent ones."""
    torch.manual_seed(0)
    models = seeded_models(name)
    assert len({model.state_dict()[next(iter(model.state_dict()))].sum().item() for model in models}) == PACK
    grouped = GroupedPack([copy.deepcopy(m) for m in models], channels_last)
    for k, model in enumerate(models):  # member k starts as seed k's model
        assert grouped.member_state_dict(k).keys() == model.state_dict().keys()
        for key, value in model.state_dict().items():
            assert torch.equal(grouped.member_state_dict(k)[key], value), key
    make, settings = OPTIMIZERS[optimizer]
    opt_grouped = make(grouped.parameters(), **settings)
    opts = [make(model.parameters(), **settings) for model in models]
    for _ in range(STEPS):
        x, y = torch.randn(PACK, 6, 3, 32, 32), torch.randint(10, (PACK, 6))
        logits = grouped(x)
        alone = [model(x[k]) for k, model in enumerate(models)]
        torch.testing.assert_close(logits, torch.stack(alone), atol=ATOL, rtol=RTOL)
        opt_grouped.zero_grad()
        F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1).sum().backward()
        opt_grouped.step()
        for k, (model, opt) in enumerate(zip(models, opts, strict=True)):
            opt.zero_grad()
            F.cross_entropy(alone[k], y[k]).backward()
            opt.step()
            for key, value in model.state_dict().items():
                torch.testing.assert_close(grouped.member_state_dict(k)[key], value, atol=ATOL, rtol=RTOL, msg=key)
    grouped.eval()
    with torch.no_grad():
        shared = torch.randn(5, 3, 32, 32)
        evaluated = grouped(shared, shared_input=True)
        for k, model in enumerate(models):
            torch.testing.assert_close(evaluated[k], model.eval()(shared), atol=ATOL, rtol=RTOL)


def test_grouped_pack_does_not_mix_members() -> None:
    """Changing member 0's input changes only member 0's output."""
    models = seeded_models("resnet18")
    grouped = GroupedPack(models).eval()
    x = torch.randn(PACK, 4, 3, 32, 32)
    with torch.no_grad():
        before = grouped(x)
        x[0] += 1
        after = grouped(x)
    assert not torch.allclose(before[0], after[0])
    torch.testing.assert_close(before[1:], after[1:], atol=0, rtol=0)
