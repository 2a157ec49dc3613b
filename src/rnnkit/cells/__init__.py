"""Recurrent cells: TF1's ``tf.nn.rnn_cell`` family, on one step protocol."""

from rnnkit.cells.base import LSTMStateTuple, RNNCell
from rnnkit.cells.basic import BasicRNNCell
from rnnkit.cells.block import GRUBlockCell, GRUBlockCellV2, LSTMBlockCell, LSTMBlockFusedCell
from rnnkit.cells.dropout import DropoutWrapper
from rnnkit.cells.gru import GRUCell
from rnnkit.cells.lstm import BasicLSTMCell, LayerNormLSTMCell, LSTMCell
from rnnkit.cells.wrappers import DeviceWrapper, MultiRNNCell, ResidualWrapper

__all__ = ["BasicLSTMCell", "BasicRNNCell", "DeviceWrapper", "DropoutWrapper", "GRUBlockCell",
           "GRUBlockCellV2", "GRUCell", "LSTMBlockCell", "LSTMBlockFusedCell", "LSTMCell",
           "LSTMStateTuple", "LayerNormLSTMCell", "MultiRNNCell", "RNNCell", "ResidualWrapper"]
