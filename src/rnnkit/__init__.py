"""rnnkit: TensorFlow's recurrent-network system rebuilt on PyTorch.

TF1-style code changes only its imports::

    import rnnkit as rk
    with rk.variable_scope("model", initializer=rk.init.orthogonal()):
        w = rk.get_variable("w", [4, 4])
    print(rk.describe())
"""

from rnnkit import fast, init, io, layers
from rnnkit.cells import (
    BasicLSTMCell,
    BasicRNNCell,
    DeviceWrapper,
    DropoutWrapper,
    GRUBlockCell,
    GRUBlockCellV2,
    GRUCell,
    LayerNormLSTMCell,
    LSTMBlockCell,
    LSTMBlockFusedCell,
    LSTMCell,
    LSTMStateTuple,
    MultiRNNCell,
    ResidualWrapper,
    RNNCell,
)
from rnnkit.describe import VariableTable, describe
from rnnkit.raw_rnn import TensorArray, raw_rnn
from rnnkit.rnn import (
    bidirectional_dynamic_rnn,
    dynamic_rnn,
    stack_bidirectional_dynamic_rnn,
    stack_bidirectional_rnn,
    static_bidirectional_rnn,
    static_rnn,
)
from rnnkit.scope import (
    AUTO_REUSE,
    Provenance,
    Variable,
    VariableScope,
    embedding_lookup,
    get_variable,
    get_variable_scope,
    global_variables,
    reset_default_graph,
    trainable_variables,
    variable_scope,
)

__version__ = "0.1.0"

__all__ = [
    "BasicLSTMCell", "BasicRNNCell", "DeviceWrapper", "DropoutWrapper", "GRUBlockCell",
    "GRUBlockCellV2", "GRUCell", "LSTMBlockCell", "LSTMBlockFusedCell", "LSTMCell",
    "LSTMStateTuple", "LayerNormLSTMCell", "MultiRNNCell", "RNNCell", "ResidualWrapper",
    "TensorArray", "bidirectional_dynamic_rnn", "raw_rnn", "dynamic_rnn", "stack_bidirectional_dynamic_rnn",
    "stack_bidirectional_rnn", "static_bidirectional_rnn", "static_rnn",
    "AUTO_REUSE", "Provenance", "Variable", "VariableScope", "VariableTable", "describe",
    "embedding_lookup", "fast", "get_variable", "get_variable_scope", "global_variables", "init", "io",
    "layers",
    "reset_default_graph", "trainable_variables", "variable_scope",
]
