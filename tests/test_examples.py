"""Each script in examples/ runs and does what it says (small settings, in process)."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tf1_bidirectional_tagger_learns_a_two_sided_tag():
    tagger = _load("tf1_tagger")
    ids, lengths, tags = tagger.make_batch(64, __import__("torch").Generator().manual_seed(5))
    majority = max((tags == 0).sum(), (tags == 1).sum()).item() / (tags >= 0).sum().item()
    acc = tagger.train(steps=150, batch=32, seed=0)
    assert acc > majority + 0.15, (acc, majority)


def test_keras_style_sentiment_model_learns_word_order():
    sentiment = _load("keras_sentiment")
    _, labels = sentiment.make_batch(512, __import__("torch").Generator().manual_seed(9))
    majority = max(labels.float().mean().item(), 1 - labels.float().mean().item())
    acc = sentiment.train(steps=120, batch=32, seed=0)
    assert acc > majority + 0.1, (acc, majority)


def test_transfer_restore_reuses_and_freezes_only_the_encoder(tmp_path):
    import torch

    transfer = _load("transfer_restore")
    r = transfer.run(tmp_path, steps=60)
    encoder = ["encoder/embedding", "encoder/rnn/gru_cell/gates/kernel", "encoder/rnn/gru_cell/gates/bias",
               "encoder/rnn/gru_cell/candidate/kernel", "encoder/rnn/gru_cell/candidate/bias"]
    assert sorted(r["report"].matched) == sorted(encoder)
    assert not r["report"].missing and not r["report"].mismatched
    variables = {v.name: v for v in r["model"].parameters()}
    for name in encoder:  # restored, frozen, and untouched by training the new head
        assert torch.equal(variables[name + ":0"], r["saved"][name + ":0"])
        assert not variables[name + ":0"].requires_grad
    assert variables["head_b/kernel:0"].requires_grad and "head_a/kernel:0" not in variables


def test_seq2seq_decodes_greedily_with_raw_rnn():
    import torch

    reverse = _load("seq2seq_reverse")
    model, acc = reverse.train(steps=150, batch=64, seed=0)
    assert acc > 0.6, acc  # chance is 1/9
    src, _, lengths = reverse.make_batch(4, torch.Generator().manual_seed(3))
    pred = model.greedy(src, lengths)
    assert pred.shape == (4, int(lengths.max())) and pred.dtype == torch.int64
    past = torch.arange(pred.shape[1]) >= lengths[:, None]
    assert not bool(pred[past].any())  # finished entries emit zeros


def test_conv_lstm_predicts_next_frames_better_than_repeating_the_last():
    next_frame = _load("conv_lstm_next_frame")
    model, mse, last = next_frame.train(steps=100, batch=16, seed=0)
    assert mse < 0.85 * last, (mse, last)
    assert type(model.model_layers[0]).__name__ == "ConvLSTM2D"  # read back from its .keras
