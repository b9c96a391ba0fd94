"""A batch's way from a data worker to the training process, in one shared-memory block.

PyTorch's data loader hands every tensor of a worker's batch over by its own shared-memory
file descriptor, and the receiving process fetches each descriptor from the worker over a
socket: about 0.5 ms per tensor on a small CPU (``benchmarks/batch_transfer.py``). A
multimodal batch holds dozens of small tensors (ids, masks, labels, positions, the splice's
indices, each modality's inputs: a molecule batch alone has five), so that is 5-15 ms a step in
the training process. :func:`for_transport` copies the small tensors of a collated batch into
one buffer; unpickled on the other side, the batch is a plain ``dict`` again whose small tensors
are views of that one buffer. Large tensors (images, spectrograms) still travel on their own:
copying them would cost more than their one descriptor.

In the process that collated it (``num_workers=0``) the batch is used as it is: nothing is
copied unless it is pickled.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

#: Tensors up to this many bytes travel in the shared buffer; larger ones on their own.
SMALL_BYTES = 1 << 20
_ALIGN = 64


class _Slot(NamedTuple):
    """Where a small tensor stood in the batch: its bytes' place in the shared buffer."""

    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]


def _small(x: Any) -> bool:
    return (type(x) is torch.Tensor and x.device.type == "cpu" and x.layout is torch.strided and not x.is_quantized
            and not x.requires_grad and 0 < x.nbytes <= SMALL_BYTES)


def _skeleton(x: Any, found: list[tuple[int, torch.Tensor]]) -> Any:
    """``x`` with each small tensor replaced by a :class:`_Slot` (dicts, lists and tuples walked);
    ``found`` gets ``(offset, tensor)`` for each, offsets aligned."""
    if _small(x):
        offset = -(-(found[-1][0] + found[-1][1].nbytes) // _ALIGN) * _ALIGN if found else 0
        found.append((offset, x))
        return _Slot(offset, x.dtype, tuple(x.shape))
    if type(x) is dict:
        return {k: _skeleton(v, found) for k, v in x.items()}
    if type(x) in (list, tuple):
        return type(x)(_skeleton(v, found) for v in x)
    return x


def _view(buffer: torch.Tensor, offset: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    nbytes = dtype.itemsize * torch.Size(shape).numel()
    return buffer[offset : offset + nbytes].view(dtype).view(shape)


def _rebuild(x: Any, buffer: torch.Tensor) -> Any:
    """The unpickling side: the batch again, its small tensors views of ``buffer``."""
    if type(x) is _Slot:
        return _view(buffer, x.offset, x.dtype, x.shape)
    if type(x) is dict:
        return {k: _rebuild(v, buffer) for k, v in x.items()}
    if type(x) in (list, tuple):
        return type(x)(_rebuild(v, buffer) for v in x)
    return x


class TransportBatch(dict):
    """A collated batch (a ``dict``) that pickles its small tensors as one buffer.

    Used where it was made it is the batch itself; unpickled it comes back as a plain ``dict``.
    """

    def __reduce_ex__(self, protocol: int):
        found: list[tuple[int, torch.Tensor]] = []
        skeleton = _skeleton(dict(self), found)
        if len(found) < 2:  # one descriptor either way
            return (dict, (dict(self),))
        buffer = torch.empty(found[-1][0] + found[-1][1].nbytes, dtype=torch.uint8)
        for offset, t in found:
            _view(buffer, offset, t.dtype, tuple(t.shape)).copy_(t)
        return (_rebuild, (skeleton, buffer))


def for_transport(batch: Any) -> Any:
    """``batch`` marked to cross to another process in one buffer (a dict batch; anything else as is)."""
    return TransportBatch(batch) if type(batch) is dict else batch


class TransportCollator:
    """Wraps a collate function so its batches leave a data worker in one buffer (:func:`for_transport`)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, samples: list[Any]) -> Any:
        return for_transport(self.collate(samples))
