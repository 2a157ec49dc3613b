"""A short run of benchmarks/fuzz_readers.py in the suite: every mutated file of every format
gives a model or FormatError (the long run's counts are in benchmarks/RESULTS.md)."""

import importlib.util
from pathlib import Path

import pytest


def _fuzz():
    path = Path(__file__).parent.parent / "benchmarks" / "fuzz_readers.py"
    spec = importlib.util.spec_from_file_location("fuzz_readers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", [1, 2])
def test_mutated_files_give_a_model_or_format_error(seed):
    counts = _fuzz().run(inputs=40, seed=seed)
    assert set(counts) == {"tf index", "tf data", "native", "native Keras", ".keras", ".weights.h5",
                           "torch .pt", "ConvLSTM .keras", "ConvLSTM native"}
    for fmt, c in counts.items():
        assert sum(c.values()) == 40
        assert set(c) <= {"ok", "FormatError"}, (fmt, dict(c))
        assert c["FormatError"] > 0, fmt  # the mutations do reach the readers' checks


def test_a_zip_member_name_that_is_not_utf8_is_a_format_error(tmp_path):
    """Found by the long fuzz run: zipfile raises UnicodeDecodeError for such a name."""
    import torch

    from rnnkit.io import FormatError
    from rnnkit.io.inspect import inspect_file

    path = tmp_path / "lstm.pt"
    torch.save(torch.nn.LSTM(2, 2).state_dict(), path)
    data = bytearray(path.read_bytes())
    at = data.rindex(b"PK\x01\x02") + 46  # the first byte of the last central-directory name
    data[at] = 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError):
        inspect_file(path)
