"""Small pieces every analysis shares: logged layers as rows, safe shares, the run's name."""

from __future__ import annotations

import os

import numpy as np


class LayerRows:
    """The logged layers in order, and a vectorised layer id -> row lookup."""

    def __init__(self, layers: list[int]) -> None:
        if not layers:
            raise ValueError("no logged layers")
        self.layers = sorted(layers)
        self._row = np.full(max(self.layers) + 1, -1, dtype=np.int64)
        self._row[self.layers] = np.arange(len(self.layers))

    def __len__(self) -> int:
        return len(self.layers)

    def rows(self, layer: np.ndarray) -> np.ndarray:
        """int64 row of each layer id (every id must be a logged layer)."""
        return self._row[layer]


def shares(counts: np.ndarray) -> np.ndarray:
    """``counts`` divided by their sum along the last axis (zeros where the sum is 0)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def run_identity(header: dict, files: list) -> dict:
    """What every output says of the logs it read: model, run, schema, shape, files."""
    return {
        "model_id": header.get("model_id"),
        "model_name": model_label(header),
        "run_id": header.get("run_id"),
        "schema": header.get("schema"),
        "num_experts": header.get("num_experts"),
        "top_k": header.get("top_k"),
        "files": [str(f) for f in files],
    }


def model_label(header: dict) -> str:
    """The model's name for titles: the header's ``model_name`` (hub id or folder name).

    Logs written before that field existed: the last part of an absolute path.
    """
    name = header.get("model_name") or header.get("model_id") or "unknown model"
    return os.path.basename(name.rstrip("/")) if os.path.isabs(name) else name
