"""Write-then-rename checkpoints for Lightning (see :func:`medcomp.utils.atomic.atomic_checkpoint_io`)."""

from lightning.fabric.utilities import cloud_io
from lightning.pytorch.plugins.io import TorchCheckpointIO

from medcomp.utils.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_path(path) as tmp:
            cloud_io._atomic_save(checkpoint, tmp)
