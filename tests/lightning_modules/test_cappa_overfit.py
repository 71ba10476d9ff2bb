"""Overfit check: the CapPa decoder of the ``cappa`` module, trained on one phantom volume,
writes that volume's structured report back exactly by greedy decoding, in both modes."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from ctvlp.config.loader import load_experiment
from lightning_modules import rrg
from lightning_modules.cappa import CapPaModule

STEPS = 200


@pytest.fixture
def single_thread():
    """Tiny models run fastest on one thread (and do not fight a busy machine for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_decoder_trained_on_one_volume_reproduces_its_report(
    phantom_overrides: list[str], single_thread
) -> None:
    overrides = [*phantom_overrides, "data.crop_size=32", "objectives.rrg.parallel_prob=0.5"]
    cfg = load_experiment("cappa", "cpu_demo", overrides)
    datamodule = CapPaModule.build_datamodule(cfg)
    datamodule.setup()
    # The validation volume (canonical section order) with the shortest report among the first few.
    samples = [datamodule.datasets["val"][i] for i in range(8)]
    builder = datamodule.collate.cappa_targets
    lengths = [len(builder.slot_ids(builder(s["sections"]).labels)) for s in samples]
    sample = samples[lengths.index(min(lengths))]
    # Slots for exactly this report: nothing truncated, the last slot is the eighth separator.
    cfg = OmegaConf.merge(cfg, {"objectives": {"rrg": {"slots": min(lengths)}}})
    torch.manual_seed(0)
    module = CapPaModule(OmegaConf.to_container(cfg, resolve=True))
    targets = module.rrg_targets
    batch = datamodule.collate([sample])
    example = targets(sample["sections"], order=tuple(sample["sections"]))
    cappa = {key: getattr(example, key)[None] for key in ("input_ids", "parallel_input_ids", "labels")}
    reference = targets.slot_ids(example.labels)
    assert len(reference) == targets.num_slots and reference.count(targets.sep_id) == 8

    module.eval()
    with torch.no_grad():
        image_tokens = module.image_tokens(batch["image"])  # the volume's tokens, encoder fixed
    head = module.rrg_head.train()
    optimiser = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for step in range(STEPS):
        causal = rrg.draw_causal(0, step, float(cfg.objectives.rrg.parallel_prob))
        loss = head.caption_loss(image_tokens, cappa, causal=causal)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    head.eval()
    order = [tuple(sample["sections"])]
    expected = targets.decode(reference, order[0])
    header_ids = example.header_ids[None]
    for causal in (False, True):
        generated = head.generate_greedy(
            image_tokens, header_ids, targets.num_slots, causal=causal, start_id=targets.start_id
        )
        assert generated[0].tolist() == reference, (causal, losses[-5:])
        assert rrg.generate_reports(head, targets, image_tokens, header_ids, order, causal) == [expected]
    assert "Lungs and Airways: " in expected and len(expected.splitlines()) == 8
