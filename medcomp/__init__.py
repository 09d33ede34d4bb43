"""medcomp: medical image compression and diagnosis from compressed images."""

__version__ = "0.1.0"
