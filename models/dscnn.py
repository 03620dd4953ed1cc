"""DS-CNN: depthwise-separable CNN for micro-controller keyword spotting.

After Zhang et al., "Hello Edge: Keyword Spotting on Microcontrollers" (DS-CNN-S): one regular
convolution with a wide ``(freq x time)`` kernel and stride 2 in both axes, then ``n_blocks``
depthwise-separable blocks (``depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU``), global
average pooling, dropout and a linear classifier.

With the defaults (64 channels, 4 blocks) it has ~23k parameters plus ``65 * n_classes`` for the
head, i.e. a few tens of KB of int8 weights, and ~2.6M MACs for 10 MFCC x 48 frames. Every
convolution is padded so that a size ``n`` maps to ``ceil(n / 2)`` (stride 2) or ``n``: any
``H x W >= 1 x 1`` is accepted.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .base import KWSModel

__all__ = ["DSCNN", "DepthwiseSeparable"]


class DepthwiseSeparable(nn.Sequential):
    """``depthwise kxk -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU``."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1):
        super().__init__(
            nn.Conv2d(c_in, c_in, kernel, stride=stride, padding=kernel // 2, groups=c_in, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class DSCNN(KWSModel):
    """DS-CNN (small) for ``(B, 1, n_mfcc, frames)`` MFCC images.

    Parameters
    ----------
    n_classes : int
    input_shape : tuple[int, int]
        ``(n_mfcc, frames)``, e.g. ``(10, 48)`` on a micro-controller.
    channels : int
        width of every layer; ``embedding_dim = channels``.
    n_blocks : int
        number of depthwise-separable blocks.
    first_kernel : tuple[int, int]
        odd ``(freq, time)`` kernel of the first convolution (stride 2 x 2).
    dropout : float
        dropout probability before the classifier.
    """

    arch = "dscnn"

    def __init__(
        self,
        n_classes: int,
        input_shape: Sequence[int],
        channels: int = 64,
        n_blocks: int = 4,
        first_kernel: Sequence[int] = (5, 9),
        dropout: float = 0.2,
    ):
        super().__init__(n_classes, input_shape)
        kh, kw = (int(k) for k in first_kernel)
        if kh % 2 == 0 or kw % 2 == 0 or kh < 1 or kw < 1:
            raise ValueError(f"first_kernel must be two positive odd sizes, got {first_kernel}")
        if int(channels) < 1 or int(n_blocks) < 0:
            raise ValueError(f"bad channels={channels} / n_blocks={n_blocks}")
        channels = int(channels)
        stem = nn.Sequential(
            nn.Conv2d(1, channels, (kh, kw), stride=2, padding=(kh // 2, kw // 2), bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        blocks = [DepthwiseSeparable(channels, channels) for _ in range(int(n_blocks))]
        self.body = nn.Sequential(stem, *blocks)
        self._finish(
            embedding_dim=channels,
            dropout=dropout,
            kwargs={
                "channels": channels,
                "n_blocks": int(n_blocks),
                "first_kernel": [kh, kw],
                "dropout": float(dropout),
            },
        )
