"""edgekws: distil audio datasets into tiny coresets and train keyword spotters on the edge."""

__version__ = "0.1.0"
