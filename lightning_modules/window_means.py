"""Per-name means over windows of ``every`` steps, for scalars that not every step produces.

Lightning writes a step's logged values to the logger once every ``log_every_n_steps`` steps.
When MAE and vision-language steps alternate, a loss logged only on the steps that compute it
would reach the logger only if its steps happen to be the written ones (with an even interval,
never for one of the two objectives). So each step logs, for every name seen in the current window
of ``every`` steps (``step // every``), the mean of its values so far in that window: whichever
step the logger writes, it shows every objective of the window, averaged over its own steps.
"""

from __future__ import annotations


class WindowMeans:
    def __init__(self) -> None:
        self.window = -1
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def update(self, step: int, every: int, values: dict[str, float]) -> dict[str, float]:
        """Add this step's ``values``; return the window means of every name seen in the window."""
        window = step // max(1, every)
        if window != self.window:
            self.window, self.sums, self.counts = window, {}, {}
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
            self.counts[name] = self.counts.get(name, 0) + 1
        return {name: self.sums[name] / self.counts[name] for name in self.sums}
