"""Packed training: member k of a pack is seed k trained alone (parameters, BatchNorm statistics,
predictions), members do not couple, and a diverging member stops alone."""

from collections.abc import Callable

import numpy as np
import pytest
import torch
from omegaconf import DictConfig
from pytorch_lightning.plugins import TorchSyncBatchNorm

import src.training.job
from src.config.paths import seed_record_path
from src.contracts.records import read_record
from src.errors import ConfigError, TrainingError
from src.models.archs import MLP
from src.models.packing import Members, _compiled, _compiled_mlp_forward
from src.sweep.plan import PACKING, pack_mechanism, resolve_pack
from src.training.job import run_job

# A few steps on small subsets of the 8×8 digits (10% subsets: 144 examples, 3 steps an epoch).
FEW_STEPS = ["subset.ratio=0.1", "trainer.max_epochs=2", "record.save_model=true", "optim.lr=0.05"]
CNN_SMALL = ["model=cnn_small", "model.kwargs.hidden=32", "dataset.augment.crop_padding=1",
             "dataset.augment.hflip=true"]
# Float noise of batched vs single convolutions grows fastest here: fewer, smaller steps.
RESNET18 = ["model=resnet18", "model.small_input_stem=true", "optim.lr=0.01", "trainer.max_epochs=1"]
# Each family with each mechanism that packs it (perf.packing; auto: the model's default).
FAMILIES = {
    "mlp": ["model=mlp"],
    "cnn_small grouped": [*CNN_SMALL, "perf.packing=grouped"],
    "cnn_small grouped channels_last": [*CNN_SMALL, "perf.packing=grouped", "perf.channels_last=true"],
    "cnn_small vmap": [*CNN_SMALL, "perf.packing=vmap"],
    "resnet18 (BatchNorm) grouped": [*RESNET18, "perf.packing=grouped"],
    "resnet18 (BatchNorm) vmap": [*RESNET18, "perf.packing=vmap"],
    "resnet50 grouped": ["model=resnet50", "model.small_input_stem=true", "optim.lr=0.01", "trainer.max_epochs=1",
                         "perf.packing=grouped"],
}
# On the shared 2 cores: resnet50 ~160 s; resnet18 ~35 s, its default (grouped) runs in every CI run, vmap in the
# slow one.
SLOW_FAMILIES = ("resnet50 grouped", "resnet18 (BatchNorm) vmap")
SEEDS = [3, 4, 5]


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path.parent / "model.pt", weights_only=True)


def test_the_whitelist_is_what_the_equivalence_test_runs(compose_cfg: Callable[..., DictConfig]) -> None:
    tested = set()
    for overrides in FAMILIES.values():
        cfg = compose_cfg(*overrides)
        tested.add((str(cfg.model.timm_name), pack_mechanism(cfg.model, str(cfg.perf.packing))))
    assert tested == {(name, mechanism) for name, mechanisms in PACKING.items() for mechanism in mechanisms}


@pytest.mark.parametrize("family", [pytest.param(family, marks=pytest.mark.slow) if family in SLOW_FAMILIES
                                    else family for family in FAMILIES])
def test_member_equals_its_seed_trained_alone(compose_cfg: Callable[..., DictConfig], family: str) -> None:
    overrides = [*FEW_STEPS, *FAMILIES[family]]
    packed = run_job(compose_cfg(f"seeds={SEEDS}", "name=packed", *overrides))
    assert [read_record(p).seed for p in packed] == SEEDS
    for seed, packed_path in zip(SEEDS, packed, strict=True):
        [alone_path] = run_job(compose_cfg(f"seed={seed}", "name=alone", *overrides))
        together, alone = read_record(packed_path), read_record(alone_path)
        assert together.meta["pack"] == 3 and alone.meta["pack"] == 1
        assert np.array_equal(together.subset_mask, alone.subset_mask)
        np.testing.assert_allclose(together.train_prob, alone.train_prob, atol=2e-4)
        np.testing.assert_allclose(together.test_prob, alone.test_prob, atol=2e-4)
        packed_weights, alone_weights = weights(packed_path), weights(alone_path)
        assert packed_weights.keys() == alone_weights.keys()
        for name, value in alone_weights.items():  # includes BatchNorm running_mean/var, num_batches_tracked
            torch.testing.assert_close(packed_weights[name], value, atol=2e-4, rtol=1e-3, msg=name)


def test_a_diverging_member_stops_alone(compose_cfg: Callable[..., DictConfig],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    build = src.training.job.build_model

    def poisoned_for_seed_4(*args, **kwargs) -> torch.nn.Module:
        model = build(*args, **kwargs)
        if torch.initial_seed() == 4:  # build_members seeds torch with the member's seed first
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return model

    monkeypatch.setattr(src.training.job, "build_model", poisoned_for_seed_4)
    with pytest.raises(TrainingError, match=r"seeds \[4\] diverged"):
        run_job(compose_cfg(f"seeds={SEEDS}", "name=packed", *FEW_STEPS))
    monkeypatch.undo()
    cfg = compose_cfg("name=packed", *FEW_STEPS)
    assert not seed_record_path(cfg, 4).exists()
    for seed in (3, 5):
        [alone] = run_job(compose_cfg(f"seed={seed}", "name=alone", *FEW_STEPS))
        np.testing.assert_allclose(read_record(seed_record_path(cfg, seed)).train_prob,
                                   read_record(alone).train_prob, atol=2e-4)


def test_packed_job_leaves_out_seeds_that_are_done(compose_cfg: Callable[..., DictConfig]) -> None:
    run_job(compose_cfg("seed=4", *FEW_STEPS))
    written = run_job(compose_cfg(f"seeds={SEEDS}", *FEW_STEPS))
    assert [read_record(p).seed for p in written] == [3, 5]
    assert read_record(written[0]).meta["pack"] == 2


def test_packing_refuses_what_would_couple_members(compose_cfg: Callable[..., DictConfig]) -> None:
    with pytest.raises(ConfigError, match="gradient_clip_val"):
        run_job(compose_cfg(f"seeds={SEEDS}", "+trainer.gradient_clip_val=1.0", *FEW_STEPS))
    with pytest.raises(ConfigError, match="channels_last"):
        run_job(compose_cfg(f"seeds={SEEDS}", "perf.channels_last=true", "perf.packing=vmap", "model=cnn_small",
                            "model.kwargs.hidden=32", *FEW_STEPS))
    with pytest.raises(ConfigError, match=r"perf\.packing=grouped is not tested for model mlp"):
        run_job(compose_cfg(f"seeds={SEEDS}", "perf.packing=grouped", *FEW_STEPS))
    with pytest.raises(ConfigError, match="only an elementwise optimizer"):
        run_job(compose_cfg(f"seeds={SEEDS}", "optim._target_=torch.optim.Adafactor", "~optim.momentum",
                            "~optim.nesterov", *FEW_STEPS))
    with pytest.raises(ConfigError, match="draws random numbers in its forward"):
        run_job(compose_cfg(f"seeds={SEEDS}", *RESNET18, "+model.kwargs.drop_rate=0.5", *FEW_STEPS))
    with pytest.raises(ConfigError, match="repeats"):
        run_job(compose_cfg("seeds=[1,1]", *FEW_STEPS))


def test_channels_last_unpacked_matches_default_layout(compose_cfg: Callable[..., DictConfig]) -> None:
    model = ["model=cnn_small", "model.kwargs.hidden=32", *FEW_STEPS]
    [nhwc] = run_job(compose_cfg("seed=1", "perf.channels_last=true", "name=nhwc", *model))
    [nchw] = run_job(compose_cfg("seed=1", "name=nchw", *model))
    np.testing.assert_allclose(read_record(nhwc).train_prob, read_record(nchw).train_prob, atol=2e-4)


def test_compiled_forward_uses_the_sync_batchnorm_of_ddp(monkeypatch: pytest.MonkeyPatch) -> None:
    """trainer=ddp with sync_batchnorm: Lightning's strategy swaps BatchNorm for SyncBatchNorm in the module it
    was given; the compiled forward (a functional call of a template) must run those layers, not BatchNorm."""
    # what is traced, not the compiler, is tested
    monkeypatch.setattr(torch, "compile", lambda function, mode: function)
    calls = []
    sync_forward = torch.nn.SyncBatchNorm.forward
    monkeypatch.setattr(torch.nn.SyncBatchNorm, "forward",
                        lambda self, x: calls.append(tuple(x.shape)) or sync_forward(self, x))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(1),
                                torch.nn.Linear(4 * 3 * 3, 2))
    members = Members([model], arch_key="sync batchnorm test", compile="default")
    members = TorchSyncBatchNorm().apply(members)  # what DDPStrategy.setup does with trainer.sync_batchnorm=true
    members.eval()(torch.zeros(1, 2, 3, 5, 5))  # eval: SyncBatchNorm needs no process group
    assert calls == [(2, 4, 3, 3)]


@pytest.mark.parametrize("mechanism", ["single", "vmap", "baddbmm", "grouped"])
def test_every_mechanism_compiles_with_the_configured_mode(monkeypatch: pytest.MonkeyPatch, mechanism: str) -> None:
    """perf.compile_mode reaches torch.compile, whichever mechanism runs the members (what is compiled, not the
    compiler, is tested)."""
    modes: list[str] = []
    monkeypatch.setattr(torch, "compile", lambda function, mode: modes.append(mode) or function)
    _compiled.cache_clear()
    _compiled_mlp_forward.cache_clear()
    def model() -> torch.nn.Module:  # inputs (3, 2, 2)
        if mechanism == "baddbmm":
            return MLP(12, [], 3)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 2), torch.nn.Flatten(1), torch.nn.Linear(4, 3))

    models = [model() for _ in range(1 if mechanism == "single" else 2)]
    members = Members(models, f"compile mode test {mechanism}", mechanism, compile="max-autotune-no-cudagraphs")
    logits = members(torch.zeros(members.pack, 5, 3, 2, 2))
    assert logits.shape == (members.pack, 5, 3) and modes == ["max-autotune-no-cudagraphs"]


def test_resolve_pack(compose_cfg: Callable[..., DictConfig]) -> None:
    mlp = compose_cfg("model=mlp", tiny=False).model
    assert resolve_pack(8, mlp, 100) == (8, "pack=8")
    assert resolve_pack(16, mlp, 5)[0] == 5
    assert resolve_pack("auto", mlp, 100)[0] == mlp.pack_default
    for concatenating in ("densenet_bc100", "inception_small"):
        model = compose_cfg(f"model={concatenating}", tiny=False).model
        assert resolve_pack(8, model, 100) == (1, f"model {model.name} concatenates channels, which would "
                                                  "interleave the members of a grouped pack: pack=1")
        with pytest.raises(ConfigError, match=r"concatenates channels.*one per job"):
            pack_mechanism(model, "auto")
    vit = compose_cfg("model=vit_small", tiny=False).model
    assert resolve_pack(8, vit, 100) == (1, "model vit_small is not in the packing whitelist (no equivalence test): "
                                            "pack=1")
    with pytest.raises(ConfigError, match="not in the packing whitelist"):
        pack_mechanism(vit, "auto")
    for bad in (0, -2, "many"):
        with pytest.raises(ConfigError):
            resolve_pack(bad, mlp, 10)


@pytest.mark.slow
@pytest.mark.parametrize(("seeds", "model"), [("seeds=[1,2]", ["model=mlp"]), ("seed=1", ["model=mlp"]),
                                              ("seeds=[1,2]", ["model=cnn_small", "model.kwargs.hidden=32"]),
                                              ("seeds=[1,2]", ["model=cnn_small", "model.kwargs.hidden=32",
                                                               "perf.packing=vmap"])])
def test_compiled_forward_matches_eager(compose_cfg: Callable[..., DictConfig], seeds: str,
                                        model: list[str]) -> None:
    eager = run_job(compose_cfg(seeds, "name=eager", *FEW_STEPS, *model))
    compiled = run_job(compose_cfg(seeds, "perf.compile=true", "name=compiled", *FEW_STEPS, *model))
    for fast, slow in zip(compiled, eager, strict=True):
        np.testing.assert_allclose(read_record(fast).train_prob, read_record(slow).train_prob, atol=2e-4)
