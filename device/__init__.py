"""Torch-free device runtime (edgekws.device). Nothing in this package may import torch."""
