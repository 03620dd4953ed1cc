"""SE-head: a small trainable classifier over a sequence of frozen speech embeddings.

Input ``(B, 1, D, T)``: ``T`` consecutive ``D``-dimensional embeddings from the frozen speech front end
(:mod:`edgekws.speech_embedding`; ``D = 96``, ``T = 9`` for a 1 s clip), laid out like an MFCC image (feature x
time). The embedding dimension becomes the channel axis: a per-dimension affine normalisation (BatchNorm), then
``blocks`` temporal convolutions (kernel ``kernel`` along time, ``BatchNorm -> ReLU``), then either the mean and the
maximum over time are concatenated (``pool="meanmax"``, ``2 * channels``) or the whole sequence is flattened in
time order (``pool="flatten"``, ``channels * T``: where in the window a sound lies stays visible, which tells a
word alone from a word inside other speech); with ``hidden > 0`` a ReLU layer of that width follows (after
``input_dropout``). That is the embedding; then dropout and the linear classifier.

A few tens of thousands of parameters: it trains in seconds on a CPU and its int8 graph is a few tens of KB; the
frozen front end does the heavy lifting.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import KWSModel, as_batch_images

__all__ = ["SpeechEmbeddingHead", "with_pooled_embedding"]


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
    pool : str
        ``"meanmax"`` (mean and max over time) or ``"flatten"`` (every time step; fixes ``T``).
    hidden : int
        width of a ReLU layer between the pooled features and the classifier (0: none).
    input_dropout : float
        dropout on the pooled features before the hidden layer (training only).
    pooled_embedding : bool
        the embedding also carries the mean and max over time of the normalised input (``2 D`` more values): a
        device fine-tuning a linear head on the embedding then sees features that adapt to new voices far better
        than the hidden layer alone (see :func:`with_pooled_embedding`, which adds them to a trained head without
        changing its outputs).
    """

    arch = "se-head"

    def __init__(self, n_classes: int, input_shape: Sequence[int] = (96, 9), channels: int = 96, blocks: int = 0,
                 kernel: int = 3, dropout: float = 0.7, pool: str = "meanmax", hidden: int = 0,
                 input_dropout: float = 0.0, pooled_embedding: bool = False):
        super().__init__(n_classes, input_shape)
        if int(kernel) < 1 or int(kernel) % 2 == 0:
            raise ValueError(f"kernel must be a positive odd number, got {kernel}")
        if int(blocks) < 0 or int(channels) < 1:
            raise ValueError(f"blocks must be >= 0 and channels >= 1, got {blocks} and {channels}")
        if pool not in ("meanmax", "flatten"):
            raise ValueError(f"pool must be 'meanmax' or 'flatten', got {pool!r}")
        if int(hidden) < 0 or not 0.0 <= float(input_dropout) < 1.0:
            raise ValueError(f"hidden must be >= 0 and input_dropout in [0, 1), got {hidden} and {input_dropout}")
        d = self.input_shape[0]
        self.norm = nn.BatchNorm2d(d)
        layers: list[nn.Module] = []
        c_in = d
        for _ in range(int(blocks)):
            layers += [nn.Conv2d(c_in, int(channels), (1, int(kernel)), padding=(0, int(kernel) // 2), bias=False),
                       nn.BatchNorm2d(int(channels)), nn.ReLU(inplace=True)]
            c_in = int(channels)
        self.body = nn.Sequential(*layers)
        self.pooling = pool
        pooled = 2 * c_in if pool == "meanmax" else c_in * self.input_shape[1]
        self.mlp = (nn.Sequential(nn.Dropout(float(input_dropout)), nn.Linear(pooled, int(hidden)), nn.ReLU())
                    if int(hidden) else nn.Identity())
        kwargs = {"channels": int(channels), "blocks": int(blocks), "kernel": int(kernel), "dropout": float(dropout)}
        if pool != "meanmax" or hidden or input_dropout:  # configs of the original head stay as they were
            kwargs.update(pool=pool, hidden=int(hidden), input_dropout=float(input_dropout))
        self.pooled_embedding = bool(pooled_embedding)
        if self.pooled_embedding:
            kwargs["pooled_embedding"] = True
        extra = 2 * self.input_shape[0] if self.pooled_embedding else 0
        self._finish(embedding_dim=(int(hidden) or pooled) + extra, dropout=dropout, kwargs=kwargs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, channels, 1, T)`` after the temporal convolutions."""
        x = as_batch_images(x).permute(0, 2, 1, 3)  # (B, D, 1, T): embedding dimensions as channels
        return self.body(self.norm(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        f = self.forward_features(x).flatten(2)  # (B, C, T)
        if self.pooling == "flatten":
            if f.shape[2] != self.input_shape[1]:
                raise ValueError(f"a flattening head takes {self.input_shape[1]} embeddings, got {f.shape[2]}")
            z = f.flatten(1)
        else:
            z = torch.cat([f.mean(dim=2), f.amax(dim=2)], dim=1)
        z = self.mlp(z)
        if self.pooled_embedding:
            n = self.norm(as_batch_images(x).permute(0, 2, 1, 3)).flatten(2)  # (B, D, T) normalised input
            z = torch.cat([z, n.mean(dim=2), n.amax(dim=2)], dim=1)
        return z


def with_pooled_embedding(model: SpeechEmbeddingHead) -> SpeechEmbeddingHead:
    """The same head with ``pooled_embedding=True``: identical outputs (the classifier's weights on the added
    features are zero), a longer embedding for fine-tuning on a device."""
    if model.pooled_embedding:
        return model
    cfg = dict(model.config["kwargs"])
    cfg["pooled_embedding"] = True
    wide = SpeechEmbeddingHead(model.n_classes, model.input_shape, **cfg)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    wide.load_state_dict(state, strict=False)
    with torch.no_grad():
        wide.classifier.weight.zero_()
        wide.classifier.weight[:, : model.embedding_dim] = model.classifier.weight
        wide.classifier.bias.copy_(model.classifier.bias)
    return wide.train(model.training)
