"""One weight for each layer's query/key/value projections and one for each FFN's gate/up projections,
so a step runs one matrix product where the checkpoint has two or three.

Made once, when the engine is built on a loaded model (checkpoints load unchanged): the projections'
own weights then become views into the fused weight, so the model takes no extra memory and
transformers' own forward (`generate()`) reads the same numbers. Build the engine after the model is
on its device: moving the model afterwards would give every view a storage of its own.
"""

from __future__ import annotations

import torch
from torch import nn


def fuse_rows(modules: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The modules' weights (and biases) stacked by output rows; the modules keep views into them."""
    return (_fused(modules, "weight"),
            None if modules[0].bias is None else _fused(modules, "bias"))


def _fused(modules: list[nn.Linear], name: str) -> torch.Tensor:
    parts = [getattr(module, name) for module in modules]
    already = all(part.untyped_storage().data_ptr() == parts[0].untyped_storage().data_ptr()
                  and part.storage_offset() == parts[0].storage_offset() + sum(p.numel() for p in parts[:index])
                  for index, part in enumerate(parts))
    rows = sum(part.shape[0] for part in parts)
    if already:  # an engine was built on this model before
        return parts[0].detach().as_strided((rows,) + parts[0].shape[1:], parts[0].stride())
    fused = torch.cat([part.detach() for part in parts])
    start = 0
    for module, part in zip(modules, parts):
        setattr(module, name, nn.Parameter(fused[start:start + part.shape[0]], requires_grad=False))
        start += part.shape[0]
    return fused
