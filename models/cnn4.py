"""CNN-4: a small-footprint 4-layer convolutional keyword-spotting network.

Four blocks of ``conv 3x3 -> BatchNorm -> ReLU``; the first ``pool_blocks`` blocks end in a 2x2
max-pool. Then global average pooling, dropout and a linear classifier. With the default widths
``(64, 64, 64, 64)`` it has about 112k parameters and ~28M MACs for a 40 x 48 input.

The input needs ``H, W >= 2 ** pool_blocks`` (4 x 4 with the default).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .base import KWSModel

__all__ = ["CNN4", "conv_bn_relu"]


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """``Conv2d (no bias, 'same'-style padding) -> BatchNorm2d -> ReLU``."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class CNN4(KWSModel):
    """CNN-4 for ``(B, 1, n_mfcc, frames)`` MFCC images.

    Parameters
    ----------
    n_classes : int
    input_shape : tuple[int, int]
        ``(n_mfcc, frames)`` the model is built for.
    widths : sequence of 4 ints
        output channels of the four conv blocks; ``embedding_dim = widths[-1]``.
    pool_blocks : int
        how many of the leading blocks end in a 2x2 max-pool (0..4).
    dropout : float
        dropout probability before the classifier.
    """

    arch = "cnn4"

    def __init__(
        self,
        n_classes: int,
        input_shape: Sequence[int],
        widths: Sequence[int] = (64, 64, 64, 64),
        pool_blocks: int = 2,
        dropout: float = 0.2,
    ):
        super().__init__(n_classes, input_shape)
        widths = [int(w) for w in widths]
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths must be 4 positive ints, got {widths}")
        if not 0 <= int(pool_blocks) <= 4:
            raise ValueError(f"pool_blocks must be in 0..4, got {pool_blocks}")
        layers: list[nn.Module] = []
        c_in = 1
        for i, c_out in enumerate(widths):
            block = conv_bn_relu(c_in, c_out)
            if i < pool_blocks:
                block.append(nn.MaxPool2d(2))
            layers.append(block)
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self._finish(
            embedding_dim=widths[-1],
            dropout=dropout,
            kwargs={"widths": widths, "pool_blocks": int(pool_blocks), "dropout": float(dropout)},
        )
