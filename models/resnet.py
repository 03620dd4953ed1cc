"""ResNet-18 for 1-channel MFCC images.

Standard ResNet-18 (BasicBlock, ``[2, 2, 2, 2]``, widths 64-128-256-512, stage strides ``(1, 2, 2, 2)``,
global average pooling, dropout and a linear classifier) with a 3x3 stem. By default the stem has stride 2
and a 3x3/2 max-pool, ImageNet's 4x reduction before the first stage (a 40 x 48 input costs ~102 M MACs);
``stem_stride=1`` and ``stem_pool=False`` keep the full resolution (~1.04 G MACs). Every stride-2 layer maps a
size ``n`` to ``ceil(n / 2)``, so any ``H x W >= 1 x 1`` stays valid.

The early reduction matters for tiny training sets: on 50 random real gsc-dev clips per class (CNN-4 recipe,
30 epochs, seed 0) width-0.25 nets reached 33 % test accuracy with the 4x stem, 53 % with a stride-1 stem and
max-pool (2x) and 61 % at full resolution; see ``benchmarks/results/resnet18_small_set.md``.

``width`` scales all channel counts (``resnet18-w0.5``, ``resnet18-w0.25`` for edge targets):
about 11.2M parameters at width 1, 2.8M at 0.5, 0.7M at 0.25.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import KWSModel

__all__ = ["BasicBlock", "ResNet", "ResNet18"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or c_in != c_out:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class ResNet(KWSModel):
    """ResNet with BasicBlocks for ``(B, 1, n_mfcc, frames)`` inputs.

    Parameters
    ----------
    n_classes : int
    input_shape : tuple[int, int]
    blocks : sequence of ints
        BasicBlocks per stage (``[2, 2, 2, 2]`` for ResNet-18).
    widths : sequence of ints
        channels per stage before ``width`` scaling; the stem has ``widths[0]``.
    strides : sequence of ints
        stride of each stage's first block.
    width : float
        channel multiplier.
    dropout : float
        dropout probability before the classifier.
    zero_init_residual : bool
        start each block's last BN at zero so that blocks begin as identities.
    stem_stride : int
        stride of the 3x3 stem conv.
    stem_pool : bool
        3x3 max-pool with stride 2 after the stem (ceil mode, so small inputs never collapse).
        ``stem_stride=2, stem_pool=True`` is ImageNet ResNet's 4x reduction before the first stage, which makes a
        40x48 input cost 65 M MACs instead of 1.04 G at full resolution.
    """

    arch = "resnet"

    def __init__(
        self,
        n_classes: int,
        input_shape: Sequence[int],
        blocks: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        strides: Sequence[int] = (1, 2, 2, 2),
        width: float = 1.0,
        dropout: float = 0.2,
        zero_init_residual: bool = False,
        stem_stride: int = 2,
        stem_pool: bool = True,
    ):
        super().__init__(n_classes, input_shape)
        blocks = [int(b) for b in blocks]
        widths = [int(w) for w in widths]
        strides = [int(s) for s in strides]
        if not (len(blocks) == len(widths) == len(strides) >= 1):
            raise ValueError("blocks, widths and strides must have the same non-zero length")
        if float(width) <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        chans = [_scaled(w, float(width)) for w in widths]
        stem = nn.Sequential(
            nn.Conv2d(1, chans[0], 3, stride=int(stem_stride), padding=1, bias=False),
            nn.BatchNorm2d(chans[0]),
            nn.ReLU(inplace=True),
        )
        if stem_pool:
            stem.append(nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True))
        stages: list[nn.Module] = []
        c_in = chans[0]
        for n, c_out, stride in zip(blocks, chans, strides):
            layers = []
            for i in range(n):
                layers.append(BasicBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
            stages.append(nn.Sequential(*layers))
        self.body = nn.Sequential(stem, *stages)
        self._finish(
            embedding_dim=c_in,
            dropout=dropout,
            kwargs={
                "blocks": blocks,
                "widths": widths,
                "strides": strides,
                "width": float(width),
                "dropout": float(dropout),
                "zero_init_residual": bool(zero_init_residual),
                "stem_stride": int(stem_stride),
                "stem_pool": bool(stem_pool),
            },
        )
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)


class ResNet18(ResNet):
    """ResNet-18: ``ResNet`` with ``blocks=[2, 2, 2, 2]`` and widths 64-128-256-512 (times ``width``)."""

    arch = "resnet18"

    def __init__(
        self,
        n_classes: int,
        input_shape: Sequence[int],
        width: float = 1.0,
        dropout: float = 0.2,
        zero_init_residual: bool = False,
        stem_stride: int = 2,
        stem_pool: bool = True,
    ):
        super().__init__(
            n_classes,
            input_shape,
            width=width,
            dropout=dropout,
            zero_init_residual=zero_init_residual,
            stem_stride=stem_stride,
            stem_pool=stem_pool,
        )
        self.config["kwargs"] = {
            "width": float(width),
            "dropout": float(dropout),
            "zero_init_residual": bool(zero_init_residual),
            "stem_stride": int(stem_stride),
            "stem_pool": bool(stem_pool),
        }
