"""Layer wrappers: ``Bidirectional`` (an RNN both ways, merged) and ``TimeDistributed``."""

from __future__ import annotations

import torch

from rnnkit.layers.base import Layer, check_rank, deserialize, serialize
from rnnkit.layers.recurrent import RNN

MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def _recreate(layer: RNN, name: str, **changes) -> RNN:
    config = serialize(layer)
    config["config"].update(name=name, **changes)
    return deserialize(config)


class Bidirectional(Layer):
    """An RNN run forwards and backwards over the same inputs, as ``keras.layers.Bidirectional``.

    The forward layer is a fresh copy of ``layer`` named ``forward_<name>``; the backward one is
    ``backward_layer`` or a copy with ``go_backwards=True`` named ``backward_<name>``. Backward
    outputs are flipped back into input order before merging; with ``return_sequences`` both
    layers output zeros at masked steps (``zero_output_for_mask``), as Keras.

    Args:
        layer: an ``RNN`` (``SimpleRNN``, ``GRU``, ``LSTM``...).
        merge_mode: ``"concat"`` (default), ``"sum"``, ``"mul"``, ``"ave"`` or None (a list of
            both outputs).
        backward_layer: optional ``RNN`` to use as the backward layer.
        mask_with_initial_state: see ``RNN`` (a call with ``initial_state`` and no ``mask``
            uses the mask ``inputs`` carry only where it is set, as tf.keras; Keras 3 uses none).
        name, trainable: as Keras.

    Call: ``layer(inputs, mask=None, training=None, initial_state=None)``; ``initial_state``
    lists the forward states then the backward ones. Returns the merged output (two outputs
    with ``merge_mode=None``), then with ``return_state`` the forward and backward states.

    Raises:
        TypeError / ValueError: ``layer`` is not an RNN, an unknown ``merge_mode``, or both
            layers going the same way.
    """

    def __init__(self, layer: RNN, merge_mode: str | None = "concat",
                 backward_layer: RNN | None = None, name: str | None = None,
                 trainable: bool = True, mask_with_initial_state: bool = False):
        for arg, value in (("layer", layer), ("backward_layer", backward_layer)):
            if value is not None and not isinstance(value, RNN):
                raise TypeError(f"{arg} must be an rnnkit RNN layer, got {type(value).__name__}")
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"merge_mode must be one of {MERGE_MODES}, got {merge_mode!r}")
        super().__init__(name=name, trainable=trainable)
        self.merge_mode = merge_mode
        self.mask_with_initial_state = bool(mask_with_initial_state)
        self.forward_layer = _recreate(layer, f"forward_{layer.name.removeprefix('forward_')}")
        self.backward_layer = backward_layer or _recreate(
            layer, f"backward_{layer.name.removeprefix('backward_')}", go_backwards=True)
        if self.forward_layer.go_backwards == self.backward_layer.go_backwards:
            made = ("" if backward_layer else " (the backward copy of layer always goes "
                    "backwards, as in Keras: give layer go_backwards=False)")
            raise ValueError("backward_layer must have the opposite go_backwards of layer, both "
                             f"have go_backwards={self.forward_layer.go_backwards}{made}")
        for sub in (self.forward_layer, self.backward_layer):
            sub.zero_output_for_mask = sub.return_sequences
        self.return_sequences = self.forward_layer.return_sequences
        self.return_state = self.forward_layer.return_state
        self.set_path(self.name)

    def set_path(self, path: str) -> None:
        super().set_path(path)
        for sub in (self.forward_layer, self.backward_layer):
            sub.set_path(f"{path}/{sub.name}")

    def num_outputs(self) -> int:
        states = 2 * self.forward_layer.state_count if self.return_state else 0
        return (2 if self.merge_mode is None else 1) + states

    def output_structure(self) -> list | None:
        inner = self.forward_layer.output_structure()
        if not (self.return_state and isinstance(inner, list)):
            return super().output_structure()
        # the output(s), then each direction's states nested as its layer's (a stack's lists)
        return [None] * (2 if self.merge_mode is None else 1) + inner[1:] * 2

    def forward(self, inputs: torch.Tensor, mask=None, training=None, initial_state=None):
        fw_state = bw_state = None
        if initial_state is not None:
            want = 2 * self.forward_layer.state_count
            if not isinstance(initial_state, (list, tuple)) or len(initial_state) != want:
                raise ValueError(f"initial_state must be a list of {want} tensors (forward "
                                 f"states, then backward states), got {initial_state!r:.80}")
            fw_state, bw_state = initial_state[:want // 2], initial_state[want // 2:]
        y = self.forward_layer(inputs, mask=mask, training=training, initial_state=fw_state)
        y_rev = self.backward_layer(inputs, mask=mask, training=training, initial_state=bw_state)
        states = []
        if self.return_state:
            states = [*y[1:], *y_rev[1:]]
            y, y_rev = y[0], y_rev[0]
        if self.return_sequences:  # the backward outputs back in time order
            y_rev = y_rev.flip(0 if self.forward_layer.time_major else 1)
        merged = {"concat": lambda: torch.cat([y, y_rev], dim=-1), "sum": lambda: y + y_rev,
                  "ave": lambda: (y + y_rev) / 2, "mul": lambda: y * y_rev,
                  None: lambda: [y, y_rev]}[self.merge_mode]()
        outputs = merged if self.merge_mode is None else [merged]
        return [*outputs, *states] if len(outputs) + len(states) > 1 else outputs[0]

    def compute_mask(self, inputs, mask):
        out = mask if self.return_sequences else None
        masks = [out, out] if self.merge_mode is None else [out]
        if self.return_state:
            masks += [None] * (2 * self.forward_layer.state_count)
        return masks if len(masks) > 1 else masks[0]

    def reset_states(self, states=None) -> None:
        """Reset both layers' stored states (``states``: forward ones, then backward ones)."""
        half = None if states is None else len(states) // 2
        self.forward_layer.reset_states(None if states is None else states[:half])
        self.backward_layer.reset_states(None if states is None else states[half:])

    def get_config(self) -> dict:
        return {**super().get_config(), "merge_mode": self.merge_mode,
                "layer": serialize(self.forward_layer),
                "backward_layer": serialize(self.backward_layer),
                **({"mask_with_initial_state": True} if self.mask_with_initial_state else {})}

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        layer = deserialize(config.pop("layer"))
        backward = config.pop("backward_layer", None)
        return cls(layer, backward_layer=deserialize(backward) if backward else None, **config)


class TimeDistributed(Layer):
    """Apply ``layer`` to every time step of ``[batch, time, ...]`` inputs (one call on
    ``[batch*time, ...]``); the input mask passes through. The layer's ``activity_regularizer``
    applies, over batch*time rows, as in tf.keras (Keras 3's wrapper skips it)."""

    def __init__(self, layer: Layer, name: str | None = None, trainable: bool = True):
        if not isinstance(layer, Layer):
            raise TypeError(f"layer must be an rnnkit layer, got {type(layer).__name__}")
        super().__init__(name=name, trainable=trainable)
        self.layer = layer
        self.set_path(self.name)

    def set_path(self, path: str) -> None:
        super().set_path(path)
        self.layer.set_path(f"{path}/{self.layer.name}")

    def forward(self, inputs: torch.Tensor, mask=None, training=None) -> torch.Tensor:
        if not torch.is_tensor(inputs) or inputs.dim() < 3:
            check_rank(inputs, 3, "inputs", "[batch, time, ...] (rank 3 or more)")
        batch, steps = inputs.shape[:2]
        y = self.layer(inputs.reshape(batch * steps, *inputs.shape[2:]), training=training)
        return y.reshape(batch, steps, *y.shape[1:])

    def get_config(self) -> dict:
        return {**super().get_config(), "layer": serialize(self.layer)}

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        return cls(deserialize(config.pop("layer")), **config)
