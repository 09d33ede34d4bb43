"""Models whose networks are built in ``setup()`` from the data (one INR per image, its width from the byte budget).

Under ``trainer=ddp_spawn`` the fit runs in spawned processes; the main process then gets rank zero's weights through
``load_state_dict(strict=False)``, detached from its trainer and data, into a model whose ``setup()`` never ran
there: nothing would be loaded and export would find no networks. This mixin keeps those weights until
:meth:`restore_spawned_fit` can build the model from the data module and load them.
"""

from __future__ import annotations

MAX_ACTIVATIONS = 1 << 25  # points × width of one layer's activations in a training step (128 MB in float32)


def size_empty_buffers(module, state_dict) -> None:
    """Buffers that start empty and are sized by the fit (a frozen block assignment, frozen coding tables) take the
    shape of the ones in ``state_dict`` before it is loaded into ``module``."""
    own = dict(module.named_buffers())
    for name, value in state_dict.items():
        if name in own and own[name].numel() == 0 and value.numel() > 0:
            own[name].resize_(value.shape)


class BuiltInSetup:
    _pending_state = None

    @property
    def max_points_per_step(self) -> int | None:
        """Points a training step may sample so that its widest network's activations stay bounded (a 300-slice
        CT would otherwise take ~10 GB a step); None before the networks are sized."""
        widths = getattr(self, "widths", None)
        return max(1, MAX_ACTIVATIONS // max(widths)) if widths else None

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        own = self.state_dict()
        if any(k not in own for k in state_dict) and getattr(self, "_trainer", None) is None:
            self._pending_state = dict(state_dict)  # weights for networks setup() has not built yet
            return None
        size_empty_buffers(self, state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def restore_spawned_fit(self, datamodule) -> None:
        """Build the networks from ``datamodule`` and load the weights a spawned fit sent back (no-op otherwise)."""
        if self._pending_state is None:
            return
        self._data = datamodule
        datamodule.setup("fit")
        self.setup("fit")
        state, self._pending_state = self._pending_state, None
        size_empty_buffers(self, state)
        super().load_state_dict(state, strict=True)

    @property
    def data(self):
        """The data module the model is built from, kept once seen: ddp_spawn's teardown detaches it from the
        trainer before the main process exports."""
        if getattr(self, "_data", None) is None:
            self._data = self.trainer.datamodule
        return self._data
