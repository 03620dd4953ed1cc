"""SE-head: a small trainable classifier over a sequence of frozen speech embeddings.

Input ``(B, 1, D, T)``: ``T`` consecutive ``D``-dimensional embeddings from the frozen speech front end
(:mod:`edgekws.speech_embedding`; ``D = 96``, ``T = 9`` for a 1 s clip), laid out like an MFCC image (feature x
time). The embedding dimension becomes the channel axis: a per-dimension affine normalisation (BatchNorm), then
``blocks`` temporal convolutions (kernel ``kernel`` along time, ``BatchNorm -> ReLU``), then the mean and the maximum
over time are concatenated into the embedding (``2 * channels``), then dropout and the linear classifier.

A few tens of thousands of parameters: it trains in seconds on a CPU and its int8 graph is a few tens of KB; the
frozen front end does the heavy lifting.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import KWSModel, as_batch_images

__all__ = ["SpeechEmbeddingHead"]


class SpeechEmbeddingHead(KWSModel):
    """Temporal-conv head for ``(B, 1, D, T)`` embedding sequences.

    Parameters
    ----------
    n_classes : int
    input_shape : tuple[int, int]
        ``(D, T)``: embedding size and number of consecutive embeddings.
    channels : int
        width of the temporal convolutions; ``embedding_dim = 2 * channels`` (mean and max pooled).
    blocks : int
        number of temporal conv blocks (0, the default: mean/max of the normalised input embeddings,
        ``embedding_dim = 2 D``; convolutions fitted synthetic voices better and real ones worse).
    kernel : int
        odd kernel length along time.
    dropout : float
        dropout before the classifier (heavy by default: it helps most when the training voices are synthetic).
    """

    arch = "se-head"

    def __init__(self, n_classes: int, input_shape: Sequence[int] = (96, 9), channels: int = 96, blocks: int = 0,
                 kernel: int = 3, dropout: float = 0.7):
        super().__init__(n_classes, input_shape)
        if int(kernel) < 1 or int(kernel) % 2 == 0:
            raise ValueError(f"kernel must be a positive odd number, got {kernel}")
        if int(blocks) < 0 or int(channels) < 1:
            raise ValueError(f"blocks must be >= 0 and channels >= 1, got {blocks} and {channels}")
        d = self.input_shape[0]
        self.norm = nn.BatchNorm2d(d)
        layers: list[nn.Module] = []
        c_in = d
        for _ in range(int(blocks)):
            layers += [nn.Conv2d(c_in, int(channels), (1, int(kernel)), padding=(0, int(kernel) // 2), bias=False),
                       nn.BatchNorm2d(int(channels)), nn.ReLU(inplace=True)]
            c_in = int(channels)
        self.body = nn.Sequential(*layers)
        self._finish(embedding_dim=2 * c_in, dropout=dropout,
                     kwargs={"channels": int(channels), "blocks": int(blocks), "kernel": int(kernel),
                             "dropout": float(dropout)})

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, channels, 1, T)`` after the temporal convolutions."""
        x = as_batch_images(x).permute(0, 2, 1, 3)  # (B, D, 1, T): embedding dimensions as channels
        return self.body(self.norm(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        f = self.forward_features(x).flatten(2)  # (B, C, T)
        return torch.cat([f.mean(dim=2), f.amax(dim=2)], dim=1)
