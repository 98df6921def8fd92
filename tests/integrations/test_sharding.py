"""sorth layers meeting sharded parameters, in one process (fast): FSDP2 DTensors on a world of
one, ZeRO-3 partitions as DeepSpeed marks them, deferred (meta-device) initialisation."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D as HFConv1D

from sorth import SOrthConfig
from sorth.integrations import distributed
from sorth.tuner import Conv1D, Conv2d, UnsupportedLayerError
from sorth.tuner.sharding import ShardedWeightError
from tests._tolerances import tol


class Net(nn.Module):
    _no_split_modules = ("Block",)

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(2))
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x))


def _adapted(**kwargs) -> nn.Module:
    config = SOrthConfig(target_modules=["fc"], block_size=4, side="both", init_weights=False)
    return get_peft_model(Net(**kwargs), config)


@pytest.fixture
def world_of_one():
    import torch.distributed as dist

    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield distributed.init_distributed()
    finally:
        dist.destroy_process_group()


def test_meta_device_build_matches_after_reset_buffers() -> None:
    torch.manual_seed(0)
    reference = _adapted().eval()
    with torch.device("meta"):  # deferred initialisation (failed: .item() on a meta tensor)
        model = _adapted()
    model.to_empty(device="cpu")
    model.load_state_dict(reference.state_dict())  # the permutations are not in it
    assert distributed.reset_sorth_buffers(model) == 4  # 2 layers x (in, out)
    x = torch.randn(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference(x), **tol(torch.float32))


def test_zero3_partition_sizes_come_from_ds_shape() -> None:
    base = HFConv1D(48, 64)  # weight (in=64, out=48)
    base.weight = nn.Parameter(torch.empty(0))  # as DeepSpeed leaves a partitioned weight
    base.weight.ds_shape = torch.Size([64, 48])
    assert Conv1D._feature_sizes(base) == (64, 48)
    conv = nn.Conv2d(4, 8, 3)
    conv.weight = nn.Parameter(torch.empty(0))
    conv.weight.ds_shape = torch.Size([8, 4, 3, 3])
    layer = Conv2d(conv, "default", SOrthConfig(target_modules=["c"], block_size=4))
    assert layer.sorth_in["default"].n == 36


def test_merge_on_a_zero3_partition_is_refused_and_changes_nothing() -> None:
    model = _adapted()
    weight = model.base_model.model.blocks[0].fc.base_layer.weight
    weight.ds_id, weight.ds_tensor = 0, weight.detach()[:8]  # the marks of ZeRO-3
    before = weight.detach().clone()
    with pytest.raises(ShardedWeightError, match=r"partitioned by DeepSpeed ZeRO-3.*sorth merge"):
        model.merge_adapter()
    assert torch.equal(weight, before)
    assert not model.base_model.model.blocks[0].fc.merged


def test_fsdp2_merge_refused_and_adapter_after_sharding_refused(world_of_one) -> None:
    model = distributed.fully_shard_peft(_adapted(), mesh=world_of_one)
    layer = model.base_model.model.blocks[0].fc
    assert type(layer.base_layer.weight).__name__ == "DTensor"
    with pytest.raises(ShardedWeightError, match=r"FSDP2 shard \(DTensor, 16 rows"):
        model.merge_adapter()
    plain = Net()
    from torch.distributed.fsdp import fully_shard

    fully_shard(plain, mesh=world_of_one)
    with pytest.raises(UnsupportedLayerError, match=r"already sharded by FSDP2.*adapter first"):
        get_peft_model(plain, SOrthConfig(target_modules=["fc"], block_size=4))


def test_fully_shard_peft_refuses_what_it_cannot_shard(world_of_one) -> None:
    with pytest.raises(distributed.DistributedSetupError, match="layer_cls="):
        distributed.fully_shard_peft(nn.Sequential(nn.Linear(4, 4)), mesh=world_of_one)
    model = distributed.fully_shard_peft(_adapted(), mesh=world_of_one)
    with pytest.raises(distributed.DistributedSetupError, match="already sharded"):
        distributed.fully_shard_peft(model, mesh=world_of_one)


def test_init_distributed_outside_torchrun_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(distributed.DistributedSetupError, match="torchrun --nproc_per_node"):
        distributed.init_distributed()
