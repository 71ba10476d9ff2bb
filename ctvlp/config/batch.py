"""The batch plan: the per-device batch and gradient accumulation that give a run its global batch.

A recipe states its batch per optimiser step over every device, node and accumulation step
(``data.global_batch_size``: COLIPRI 16, Uniferum 64), so the recipe does not change with the
machine. ``ctvlp fit`` derives the per-device batch once the Trainer knows its devices and nodes:

    per_device = global / (devices x nodes x accumulate)

``trainer.accumulate_grad_batches`` fixes the accumulation; ``data.max_batch_per_device`` (a memory
cap) raises it to the smallest count whose per-device batch fits. A global batch that does not
divide stops the run before training, saying what would. ``data.batch_size`` given explicitly pins
the per-device batch instead (the global batch then grows with the device count).
"""

from __future__ import annotations

from dataclasses import dataclass

from ctvlp.config.errors import ConfigError


@dataclass(frozen=True)
class BatchPlan:
    per_device: int
    devices: int
    nodes: int
    accumulate: int

    @property
    def world(self) -> int:
        return self.devices * self.nodes

    @property
    def global_batch(self) -> int:
        return self.per_device * self.world * self.accumulate

    def describe(self) -> str:
        return (
            f"global batch {self.global_batch} = {self.per_device} per device x {self.devices} device(s) "
            f"x {self.nodes} node(s) x {self.accumulate} accumulation step(s)"
        )


def _nearby_multiples(global_batch: int, step: int) -> str:
    """The multiples of ``step`` on either side of ``global_batch``."""
    below = global_batch // step * step
    return f"{below} or {below + step}" if below else str(step)


def plan_from_global(
    global_batch: int,
    devices: int,
    nodes: int = 1,
    accumulate: int = 1,
    max_per_device: int | None = None,
) -> BatchPlan:
    """The plan that trains ``global_batch`` samples per optimiser step on ``devices`` x ``nodes``,
    accumulating at least ``accumulate`` micro-batches (more when ``max_per_device`` requires it)."""
    if global_batch < 1 or devices < 1 or nodes < 1 or accumulate < 1:
        raise ConfigError(
            f"data.global_batch_size={global_batch}, devices={devices}, nodes={nodes} and "
            f"trainer.accumulate_grad_batches={accumulate} must all be positive"
        )
    if max_per_device is not None and max_per_device < 1:
        raise ConfigError(f"data.max_batch_per_device={max_per_device} must be positive (or null)")
    world = devices * nodes
    if global_batch % (world * accumulate):
        raise ConfigError(
            f"data.global_batch_size={global_batch} does not divide into {devices} device(s) x {nodes} "
            f"node(s) x {accumulate} accumulation step(s) = {world * accumulate} equal per-device batches. "
            f"Run on a device count that divides it (trainer.devices), set trainer.accumulate_grad_batches "
            f"so that devices x nodes x accumulation divides it, or choose a global batch that divides "
            f"(here: {_nearby_multiples(global_batch, world * accumulate)}; the paper's learning rate "
            "belongs to its own global batch)"
        )
    if max_per_device is None or global_batch // (world * accumulate) <= max_per_device:
        return BatchPlan(global_batch // (world * accumulate), devices, nodes, accumulate)
    # One sample per device (global / world accumulation steps) always fits, so a count is found.
    steps = next(
        s
        for s in range(accumulate + 1, global_batch // world + 1)
        if global_batch % (world * s) == 0 and global_batch // (world * s) <= max_per_device
    )
    return BatchPlan(global_batch // (world * steps), devices, nodes, steps)


def plan_from_data(data: object, accumulate: int, devices: int = 1, nodes: int = 1) -> BatchPlan:
    """The plan of a ``data`` config section on ``devices`` x ``nodes``: derived from
    ``global_batch_size``, or ``batch_size`` per device where the global batch is not set."""
    global_batch = getattr(data, "global_batch_size", None)
    if global_batch is not None:
        cap = getattr(data, "max_batch_per_device", None)
        return plan_from_global(
            int(global_batch), devices, nodes, accumulate, None if cap is None else int(cap)
        )
    per_device = getattr(data, "batch_size", None)
    if per_device is None:
        raise ConfigError(
            "Set data.global_batch_size, the batch per optimiser step over all devices (the paper's "
            "batch: COLIPRI 16, Uniferum 64), or data.batch_size to fix the per-device batch"
        )
    if int(per_device) < 1 or accumulate < 1:
        raise ConfigError(
            f"data.batch_size={per_device} and trainer.accumulate_grad_batches={accumulate} must be positive"
        )
    return BatchPlan(int(per_device), devices, nodes, accumulate)
