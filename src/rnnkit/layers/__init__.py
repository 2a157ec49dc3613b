"""Keras-style layers on rnnkit's shared cells and unroll: ``SimpleRNN``, ``GRU``, ``LSTM``,
``RNN(cell)`` (a cell or a ``StackedRNNCells``), ``ConvLSTM1D/2D/3D``, ``Bidirectional``,
``Embedding``, ``Masking``, ``Dense``, ``Dropout``, ``TimeDistributed``, ``Sequential`` and a
functional ``Input``/``Model``, with Keras 3's argument names, weight names and layouts, and
mask semantics."""

from rnnkit.layers.base import Layer, clear_session, deserialize, serialize
from rnnkit.layers.cells import GRUCell, LSTMCell, SimpleRNNCell
from rnnkit.layers.conv_lstm import ConvLSTM1D, ConvLSTM2D, ConvLSTM3D, ConvLSTMCell
from rnnkit.layers.core import Dense, Dropout, Embedding, Masking
from rnnkit.layers.model import Input, Model, Sequential
from rnnkit.layers.penalties import L1L2, MaxNorm, NonNeg, UnitNorm
from rnnkit.layers.recurrent import GRU, LSTM, RNN, SimpleRNN
from rnnkit.layers.stacked import StackedRNNCells
from rnnkit.layers.wrappers import Bidirectional, TimeDistributed

__all__ = ["GRU", "LSTM", "RNN", "Bidirectional", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D",
           "ConvLSTMCell", "Dense", "Dropout", "Embedding", "GRUCell",
           "Input", "L1L2", "LSTMCell", "Layer", "Masking", "MaxNorm", "Model", "NonNeg",
           "Sequential", "SimpleRNN", "SimpleRNNCell", "StackedRNNCells", "TimeDistributed",
           "UnitNorm",
           "clear_session", "deserialize", "serialize"]
