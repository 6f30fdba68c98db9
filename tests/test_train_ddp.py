"""Two-process DistributedDataParallel on CPU (gloo): both ranks end with identical weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

CHANNELS = ("body", "boundary", "gap")


def _images():
    from competition.train.dataset import TrainImage

    rng = np.random.default_rng(0)
    out = []
    for i in range(4):
        label = np.zeros((48, 48), np.int32)
        yy, xx = np.mgrid[:48, :48]
        for k in range(1, 5):
            cy, cx = rng.integers(6, 42, size=2)
            label[((yy - cy) ** 2 + (xx - cx) ** 2 < 25) & (label == 0)] = k
        image = np.where(label[..., None] > 0, 200, 20).astype(np.uint8).repeat(3, axis=2)
        out.append(TrainImage(f"i{i}", image, label, "fluorescence", 1))
    return out


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from competition.train import distributed as ddp
    from competition.train.dataset import CropDataset, EpochSampler
    from competition.train.losses import MaskedLoss
    from competition.train.loop import build_optimizer, build_scheduler, train_one_epoch
    from competition.network import build_network
    from competition.train.recipe import Member

    info = ddp.DistInfo(rank=rank, world=world, local_rank=rank)
    info, device = ddp.setup(torch.device("cpu"), info, init_method=f"file://{init_file}")
    torch.set_num_threads(1)
    m = Member(type="all", name="d", encoder="mobilenet_v2", crop_size=32, pad=16, batch_size=2,
               epochs=1, samples_per_epoch=8, augment="light", seed=rank)  # seeds differ on purpose
    torch.manual_seed(rank)  # different init per rank: DDP must broadcast rank 0's weights
    model = build_network("Unet", "mobilenet_v2", 3)
    net = ddp.wrap(model, info, device)
    dataset = CropDataset(_images(), m, CHANNELS, False, 8)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, drop_last=True,
                                         sampler=EpochSampler(8, 0, 2, rank, world))
    assert len(loader) == 2
    opt = build_optimizer(m, net.parameters())
    sched = build_scheduler(m, opt, len(loader))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = train_one_epoch(net, loader, opt, sched, MaskedLoss(m.loss), device, scaler, info=info)
    torch.save({"model": model.state_dict(), "loss": loss}, f"{out_dir}/rank{rank}.pt")
    ddp.cleanup(info)


@pytest.mark.slow
def test_two_process_gloo_ends_with_identical_weights(tmp_path):
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2,
                       join=True, start_method="spawn")
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue  # BatchNorm statistics are per rank (no SyncBatchNorm)
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["loss"] == pytest.approx(b["loss"]), "the epoch loss is averaged over ranks"
    torch.manual_seed(0)
    from competition.network import build_network

    init = build_network("Unet", "mobilenet_v2", 3).state_dict()
    assert not torch.equal(init["segmentation_head.0.weight"],
                           a["model"]["segmentation_head.0.weight"]), "training moved the weights"
