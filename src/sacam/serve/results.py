"""Explanations kept for follow-up requests, each client's apart, within a memory budget.

A result (the model input, the maps, SA-CAM's attention data) is kept so that the page
can ask for attention rows and deletion/insertion curves, or explain another class,
without sending the image again. Each client (a browser, by its cookie) keeps its own
last few results; when all results together exceed the memory budget, the client
holding the most memory loses its oldest first, so one busy client never pushes out
another's results.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from ..methods.attention import SALayerInspection
from .progress import JobError

EXPIRED = (
    "this result has expired: the server keeps only the last few results of each browser. "
    "Explain the image again to get a new one."
)
"""What a client is told about a result id that is unknown, forgotten or not its own."""


@dataclass
class StoredResult:
    """An explanation kept for follow-up requests (attention rows, curves, other classes).

    Attributes:
        id: random hex id the client refers to.
        x: the normalised model input ``(1, 3, H, W)`` on the model's device.
        pixels: ``(3, H, W)`` [0, 1] pixels on the CPU.
        class_index: the explained class.
        layer: the layer label the maps were made at.
        maps: method -> ``(H, W)`` map in [0, 1] on the CPU.
        inspections: method -> SA-CAM inspection data (tensors on the CPU).
        probabilities: the model's softmax output for the image ``(classes,)``.
    """

    id: str
    x: torch.Tensor
    pixels: torch.Tensor
    class_index: int
    layer: str
    maps: dict[str, torch.Tensor]
    inspections: dict[str, SALayerInspection]
    probabilities: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    def nbytes(self) -> int:
        """Bytes of the tensors the result holds."""
        tensors = [self.x, self.pixels, self.probabilities, *self.maps.values()]
        for inspection in self.inspections.values():
            tensors += [
                value
                for f in dataclasses.fields(inspection)
                if isinstance(value := getattr(inspection, f.name), torch.Tensor)
            ]
        return sum(t.numel() * t.element_size() for t in tensors)


class ResultStore:
    """Results by client and id: ``per_client`` each, ``max_bytes`` in all.

    Args:
        per_client: results kept per client (its least recently used are forgotten first).
        max_bytes: bytes of tensors kept in all; beyond it the client holding the most
            loses its least recently used result; once every client is down to one,
            the oldest of those goes (never the one just stored).
    """

    def __init__(self, per_client: int = 8, max_bytes: int = 512 * 2**20) -> None:
        if per_client < 1 or max_bytes < 1:
            raise ValueError("per_client and max_bytes must be positive")
        self.per_client = per_client
        self.max_bytes = max_bytes
        self._clients: dict[str, OrderedDict[str, tuple[StoredResult, int]]] = {}
        self._lock = threading.Lock()

    def put(self, client: str, result: StoredResult) -> None:
        """Keep ``result`` for ``client``, forgetting what the limits require."""
        with self._lock:
            items = self._clients.setdefault(client, OrderedDict())
            items[result.id] = (result, result.nbytes())
            while len(items) > self.per_client:
                items.popitem(last=False)
            self._shrink(client)

    def get(self, client: str, result_id: str) -> StoredResult:
        """``client``'s result ``result_id``; :class:`JobError` 404 when gone or not its own."""
        with self._lock:
            items = self._clients.get(client)
            if items is None or result_id not in items:
                raise JobError(404, EXPIRED)
            items.move_to_end(result_id)
            return items[result_id][0]

    def total_bytes(self) -> int:
        """Bytes held by all clients' results."""
        with self._lock:
            return self._total()

    def _total(self) -> int:
        return sum(size for items in self._clients.values() for _, size in items.values())

    def _shrink(self, newest: str) -> None:
        total = self._total()
        while total > self.max_bytes:
            sizes = {c: sum(s for _, s in items.values()) for c, items in self._clients.items()}
            several = [c for c in sizes if len(self._clients[c]) > 1]
            others = [c for c in sizes if c != newest]
            if several:
                victim = max(several, key=sizes.__getitem__)
            elif others:
                victim = others[0]  # clients in the order they first stored a result
            else:
                break  # only the result just stored is left
            _, (_, size) = self._clients[victim].popitem(last=False)
            total -= size
            if not self._clients[victim]:
                del self._clients[victim]
