"""TF1 ``GRUCell`` (reset before the recurrent matmul) and its cuDNN-compatible twin."""

from __future__ import annotations

import inspect

import torch

from rnnkit import activations
from rnnkit import init as _init
from rnnkit.cells import equations as eq
from rnnkit.cells.base import check_units
from rnnkit.cells.fused import FusedCell, split_kernel


class GRUCell(FusedCell):
    """Gated recurrent unit, as ``tf.nn.rnn_cell.GRUCell`` (Cho et al., 2014).

    r, u = σ([x, h] K_g + b_g);  c = act([x, r ⊙ h] K_c + b_c);  h' = u ⊙ h + (1 - u) ⊙ c.

    Variables (TF names): ``gates/kernel [depth+H, 2H]`` (r then u), ``gates/bias [2H]``
    (1.0 unless ``bias_initializer``), ``candidate/kernel [depth+H, H]``, ``candidate/bias [H]``
    (zeros). With ``reset_after=True`` the reset gate multiplies ``h U_c + b_hc`` instead (the
    cuDNN / Keras / torch GRU), and the candidate variables are named as TF's
    ``CudnnCompatibleGRUCell``: ``candidate/input_projection/{kernel,bias}`` and
    ``candidate/hidden_projection/{kernel,bias}``.

    Args:
        num_units: H.
        activation: candidate activation (default tanh).
        kernel_initializer: for both kernels (default: the scope's, else glorot_uniform).
        bias_initializer: for both biases (default: gates 1.0, candidate 0).
        reset_after: apply the reset gate after the recurrent matmul.
        name, reuse, dtype, input_size: see ``BasicRNNCell``.
    """

    base_name = "gru_cell"
    variable_names: dict[str, str] = {}  # TF name -> this class's name for it, where they differ

    def __init__(self, num_units: int, activation=None, reuse: bool | None = None,
                 kernel_initializer=None, bias_initializer=None, name: str | None = None,
                 dtype: torch.dtype | None = None, reset_after: bool = False,
                 input_size: int | None = None):
        check_units(num_units)
        self.num_units = num_units
        self.activation = activations.get(activation)
        self.kernel_initializer = _init.get(kernel_initializer)
        self.bias_initializer = _init.get(bias_initializer)
        self.reset_after = bool(reset_after)
        super().__init__(name=name, reuse=reuse, input_size=input_size, dtype=dtype)

    @property
    def state_size(self) -> int:
        return self.num_units

    @property
    def output_size(self) -> int:
        return self.num_units

    def _var(self, name: str) -> torch.Tensor:
        """The variable GRUCell names ``name`` (under this class's own name for it)."""
        return self.get_parameter(self.variable_names.get(name, name))

    def _bias(self, name: str, shape: list[int], dtype, default) -> None:
        name = self.variable_names.get(name, name)
        if self.bias_initializer is not None:
            self.add_variable(name, shape, dtype, self.bias_initializer)
        else:
            self.add_variable(name, shape, dtype, default, "cell default")

    def _kernel(self, name: str, shape: list[int], dtype) -> None:
        self.add_variable(self.variable_names.get(name, name), shape, dtype,
                          self.kernel_initializer)

    def build(self, input_depth: int, dtype: torch.dtype) -> None:
        H = self.num_units
        self._kernel("gates/kernel", [input_depth + H, 2 * H], dtype)
        self._bias("gates/bias", [2 * H], dtype, _init.constant(1.0))
        if not self.reset_after:
            self._kernel("candidate/kernel", [input_depth + H, H], dtype)
            self._bias("candidate/bias", [H], dtype, _init.zeros())
        else:
            self._kernel("candidate/input_projection/kernel", [input_depth, H], dtype)
            self._bias("candidate/input_projection/bias", [H], dtype, _init.zeros())
            self._kernel("candidate/hidden_projection/kernel", [H, H], dtype)
            self._bias("candidate/hidden_projection/bias", [H], dtype, _init.zeros())

    def gates(self) -> dict[str, torch.Tensor]:
        """Views of the fused variables, per gate: ``W_r, W_u, W_c`` (input), ``U_r, U_u, U_c``
        (recurrent), ``b_r, b_u, b_c`` (and ``b_hc`` with ``reset_after``)."""
        self.require_built("gates")
        H, p = self.num_units, self._var
        Wg, Ug = split_kernel(p("gates/kernel"), self.input_depth)
        bg = p("gates/bias")
        if self.reset_after:
            Wc, Uc = p("candidate/input_projection/kernel"), p("candidate/hidden_projection/kernel")
            bc = p("candidate/input_projection/bias")
            extra = {"b_hc": p("candidate/hidden_projection/bias")}
        else:
            (Wc, Uc), bc, extra = split_kernel(p("candidate/kernel"), self.input_depth), \
                p("candidate/bias"), {}
        return {"W_r": Wg[:, :H], "W_u": Wg[:, H:], "W_c": Wc,
                "U_r": Ug[:, :H], "U_u": Ug[:, H:], "U_c": Uc,
                "b_r": bg[:H], "b_u": bg[H:], "b_c": bc, **extra}

    def forward(self, inputs: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
        """One step, as TF1 computes it: products over ``[x, h]`` with the variables as they
        are stored. (An unroll gathers them into ``Canonical``'s joint kernel once a sequence;
        a lone step doing so would copy every weight, which at B32 H512 was half its time.)"""
        self.begin_step(inputs, state)
        p, H = self._var, self.num_units
        r, u = torch.sigmoid(torch.addmm(p("gates/bias"), torch.cat([inputs, state], 1),
                                         p("gates/kernel"))).split(H, 1)
        if self.reset_after:
            hidden = torch.addmm(p("candidate/hidden_projection/bias"), state,
                                 p("candidate/hidden_projection/kernel"))
            c = self.activation(torch.addcmul(torch.addmm(
                p("candidate/input_projection/bias"), inputs,
                p("candidate/input_projection/kernel")), r, hidden))
        else:
            c = self.activation(torch.addmm(p("candidate/bias"), torch.cat([inputs, r * state], 1),
                                            p("candidate/kernel")))
        h = torch.lerp(c, state, u)
        return h, h

    def calls_are_steps(self) -> bool:
        return True  # forward is the Canonical step's math on the variables as stored

    def canonical(self) -> eq.Canonical:
        self.require_built("canonical")
        p, depth = self._var, self.input_depth
        names = (["candidate/input_projection/kernel", "candidate/input_projection/bias",
                  "candidate/hidden_projection/kernel", "candidate/hidden_projection/bias"]
                 if self.reset_after else ["candidate/kernel", "candidate/bias"])
        args = (depth, p("gates/kernel"), p("gates/bias"), *map(p, names))
        # without a gradient to record, the gather itself (torch's Function.apply costs about
        # three times the concatenations on a small call: it binds the arguments by signature)
        graded = torch.is_grad_enabled() and any(t.requires_grad for t in args[1:])
        K, b, b_h = (_Joint.apply if graded else _Joint.forward)(*args)
        return eq.Canonical("gru", K[:depth], K[depth:], b, self.activation, torch.sigmoid,
                            b_h=b_h, reset_after=self.reset_after)


class _Joint(torch.autograd.Function):
    """A GRU cell's kernels as one ``[depth + H, 3H]`` matrix in Keras gate order (z, r, c),
    whose row blocks are ``Canonical``'s ``W`` and ``U`` (a joint kernel, which the fast paths
    take whole), its bias ``[3H]`` alike, and with ``reset_after`` the recurrent bias ``b_h``
    (``[0, 0, b_hc]``; else None): one autograd node each way. The candidate's columns come from
    ``candidate/kernel`` (reset before), or from the input and hidden projections (reset after).
    Gathered with concatenations, autograd made each kernel's gradient from zero-padded slice
    gradients summed (ten fills and adds a call; about 1% of a B32 T100 H256 training step);
    here each gradient block is one copy. The backward is made of differentiable ops, so higher
    derivatives work."""

    generate_vmap_rule = True  # torch.func: vmap runs forward and backward as they are

    @staticmethod
    def forward(depth: int, gates_kernel, gates_bias, candidate_kernel, candidate_bias,
                hidden_kernel=None, hidden_bias=None):
        H = candidate_kernel.shape[1]
        candidate, b_h = candidate_kernel, None
        if hidden_kernel is not None:
            candidate = torch.cat([candidate_kernel, hidden_kernel])
            b_h = torch.cat([hidden_bias.new_zeros(2 * H), hidden_bias])
        K = torch.cat([gates_kernel[:, H:], gates_kernel[:, :H], candidate], 1)  # u (z), r, c
        b = torch.cat([gates_bias[H:], gates_bias[:H], candidate_bias])
        return K, b, b_h

    @staticmethod
    def setup_context(ctx, inputs, output):
        depth, _, _, candidate_kernel, _, *hidden = inputs
        ctx.H, ctx.depth = candidate_kernel.shape[1], depth
        ctx.reset_after = bool(hidden) and hidden[0] is not None

    @staticmethod
    def backward(ctx, dK, db, db_h):
        H, depth, need = ctx.H, ctx.depth, ctx.needs_input_grad
        dKg = torch.cat([dK[:, H:2 * H], dK[:, :H]], 1) if need[1] else None
        dbg = torch.cat([db[H:2 * H], db[:H]]) if need[2] else None
        dbc = db[2 * H:].contiguous() if need[4] else None
        if not ctx.reset_after:
            return None, dKg, dbg, dK[:, 2 * H:].contiguous() if need[3] else None, dbc, None, None
        dKc = dK[:depth, 2 * H:].contiguous() if need[3] else None
        dKh = dK[depth:, 2 * H:].contiguous() if need[5] else None
        dbh = db_h[2 * H:].contiguous() if need[6] else None
        return None, dKg, dbg, dKc, dbc, dKh, dbh


# torch's Function.apply binds the arguments to ``forward``'s signature on every call (for the
# ``setup_context`` form); ``inspect.signature`` returns a function's ``__signature__`` as it is,
# instead of building it anew each time
_Joint.forward.__signature__ = inspect.signature(_Joint.forward)
