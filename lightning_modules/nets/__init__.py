"""Network parts (pure torch).

timm is imported here, before any net (primus_encoder, mae_head, cappa_head and
dynamic_network_architectures import it), with exactly one of its import-time warnings silenced:
timm 1.0's ``timm/models/hrnet.py`` decorates a class with ``@torch.jit.interface``, which torch
>= 2.9 deprecates with a FutureWarning at every import. It is harmless here: we never TorchScript a
model, and HRNet is not one of ours. Python imports a module once, so later imports are silent.
"""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message=r"`torch\.jit\.interface` is deprecated", category=FutureWarning
    )
    import timm  # noqa: F401
