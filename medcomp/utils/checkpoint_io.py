"""Lightning's checkpoint writer, made write-then-rename: Lightning writes the file in place, and a kill during the
write would leave a truncated last.ckpt that resume=auto then trips over. Its own module (not utils/atomic.py) so
that the CLI never imports Lightning; a class at module level so that ddp_spawn can pickle it."""

from lightning.fabric.utilities import cloud_io
from lightning.pytorch.plugins.io import TorchCheckpointIO

from medcomp.utils.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_path(path) as tmp:
            cloud_io._atomic_save(checkpoint, tmp)
