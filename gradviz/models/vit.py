"""The bundled ``mnist-vit``: a small vision transformer for 1×28×28 digits.

torchvision's :class:`~torchvision.models.VisionTransformer` (Dosovitskiy et al. 2021) with
image 28, patch 7 (16 patches + a class token), 4 encoder layers of 4 heads, width 64, MLP
128, and a 1-channel patch projection (``conv_proj``). About 139k parameters (0.56 MB as
float32). Its head is ``heads.head`` (the final Linear); the penultimate features the
closed-form methods read are the class token after the encoder's final LayerNorm (the input
of that head).
"""

from __future__ import annotations

import math

from torch import nn

IMAGE_SIZE = 28
PATCH_SIZE = 7
NUM_LAYERS = 4
NUM_HEADS = 4
HIDDEN_DIM = 64
MLP_DIM = 128
ARCHITECTURE = (
    f"torchvision VisionTransformer(image_size={IMAGE_SIZE}, patch_size={PATCH_SIZE}, num_layers={NUM_LAYERS}, "
    f"num_heads={NUM_HEADS}, hidden_dim={HIDDEN_DIM}, mlp_dim={MLP_DIM}), 1-channel conv_proj"
)


def mnist_vit(in_channels: int = 1, num_classes: int = 10, dropout: float = 0.0) -> nn.Module:
    """A freshly initialised tiny ViT for (B, ``in_channels``, 28, 28) images -> (B, ``num_classes``) logits."""
    from torchvision.models import VisionTransformer

    net = VisionTransformer(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_layers=NUM_LAYERS, num_heads=NUM_HEADS,
                            hidden_dim=HIDDEN_DIM, mlp_dim=MLP_DIM, num_classes=num_classes, dropout=dropout)
    proj = nn.Conv2d(in_channels, HIDDEN_DIM, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)
    # the same initialisation torchvision gives its 3-channel patch projection
    nn.init.trunc_normal_(proj.weight, std=math.sqrt(1 / (in_channels * PATCH_SIZE * PATCH_SIZE)))
    nn.init.zeros_(proj.bias)
    net.conv_proj = proj
    return net
