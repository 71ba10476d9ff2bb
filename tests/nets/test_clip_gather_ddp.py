"""Two gloo processes on halves of a batch == one process on the whole batch (loss and grads)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_modules.nets.clip_loss import ClipLoss

KINDS = ("softmax", "sigmoid")
WORLD = 2
BATCH = 8


def _setup(kind: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """Identical on every rank: a tiny image Linear, a tiny text Linear and the loss (float64)."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict(
        {
            "image": torch.nn.Linear(5, 6),
            "text": torch.nn.Linear(4, 6),
            "loss": ClipLoss(kind, init_temperature=0.2),
        }
    ).double()
    image_inputs = torch.randn(BATCH, 5, dtype=torch.float64)
    text_inputs = torch.randn(BATCH, 4, dtype=torch.float64)
    return model, image_inputs, text_inputs


def _loss_and_grads(kind: str, rows: slice) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model, image_inputs, text_inputs = _setup(kind)
    loss = model["loss"](model["image"](image_inputs[rows]), model["text"](text_inputs[rows]))
    loss.backward()
    return loss.detach(), {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def _worker(rank: int, port: int, out_path: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    results: dict = {}
    half = BATCH // WORLD
    for kind in KINDS:
        loss, grads = _loss_and_grads(kind, slice(rank * half, (rank + 1) * half))
        dist.all_reduce(loss)  # DDP: mean of the local losses and of the gradients
        for grad in grads.values():
            dist.all_reduce(grad)
        results[kind] = (loss / WORLD, {name: g / WORLD for name, g in grads.items()})
    # Unequal local batches (3 + 5 rows) still gather correctly: the row-weighted mean of the
    # local softmax losses equals the full-batch loss.
    model, image_inputs, text_inputs = _setup("softmax")
    rows = slice(0, 3) if rank == 0 else slice(3, BATCH)
    with torch.no_grad():
        loss = model["loss"](model["image"](image_inputs[rows]), model["text"](text_inputs[rows]))
    weighted = loss * (rows.stop - rows.start) / BATCH
    dist.all_reduce(weighted)
    results["unequal"] = weighted
    if rank == 0:
        torch.save(results, out_path)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out_path = tmp_path_factory.mktemp("ddp") / "results.pt"
    mp.spawn(_worker, args=(_free_port(), str(out_path)), nprocs=WORLD, join=True)
    return torch.load(out_path)


@pytest.mark.parametrize("kind", KINDS)
def test_gathered_loss_and_grads_equal_single_process(ddp_results: dict, kind: str) -> None:
    loss, grads = _loss_and_grads(kind, slice(0, BATCH))
    ddp_loss, ddp_grads = ddp_results[kind]
    torch.testing.assert_close(ddp_loss, loss, rtol=0, atol=1e-6)
    assert ddp_grads.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(ddp_grads[name], grads[name], rtol=0, atol=1e-6, msg=name)
    assert grads["loss.logit_scale"].abs() > 0


def test_unequal_local_batches(ddp_results: dict) -> None:
    loss, _ = _loss_and_grads("softmax", slice(0, BATCH))
    torch.testing.assert_close(ddp_results["unequal"], loss, rtol=0, atol=1e-6)
