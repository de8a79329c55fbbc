"""The fast kernels' training step: its two micro-batches (`fast.pretrain.loss_and_gradients`,
`cores.on_two_cores`) give the whole batch's loss and gradients, the same bits whether they ran at once or one after
the other, and the BLAS's thread count is set through threadpoolctl, whose controller is built once, and left as it
was found."""
import threading

import numpy as np
import pytest

import minigpt_np as mg
from minigpt_np.fast import cores
from minigpt_np.fast.pretrain import loss_and_gradients, replica

CFG = mg.GPTConfig(vocab_size=61, block_size=12, n_layer=2, n_head=2, n_embd=16)


def windows(batch, seed=1):
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, (batch, CFG.block_size + 1))


def gradients(model):
    return {name: p.grad.copy() for name, p in model.params.items()}


@pytest.mark.parametrize("batch", [1, 2, 5, 8])
def test_two_micro_batches_give_the_whole_batch_loss_and_gradients(batch):
    """float64, so that only the order of the sums differs: 1e-12 against one forward and backward of the batch.
    An odd batch splits 3 + 2, and its parts are weighted by their tokens."""
    model, w = mg.GPT(CFG, dtype=np.float64, seed=0), windows(batch)
    with mg.kernels.using("fast"):
        whole = model.loss(w[:, :-1], w[:, 1:])
        model.zero_grad()
        whole.backward()
        expected = gradients(model)
        loss = loss_and_gradients(model, w)
    assert loss == pytest.approx(float(whole.data), rel=1e-12)
    for name, grad in gradients(model).items():
        np.testing.assert_allclose(grad, expected[name], rtol=1e-10, atol=1e-14, err_msg=name)


def test_at_once_or_one_after_the_other_the_same_bits(monkeypatch):
    """float32, the dtype of training: the micro-batches run at once, then with on_two_cores replaced by a plain
    sequence under the same BLAS thread count; every gradient is equal bit for bit."""
    model, w = mg.GPT(CFG, dtype=np.float32, seed=0), windows(8)
    with mg.kernels.using("fast"):
        at_once_loss = loss_and_gradients(model, w)
        at_once = gradients(model)

        def one_after_the_other(first, second):
            with cores.blas_threads(max(1, cores.cores() // 2)):
                return first(), second()
        monkeypatch.setattr("minigpt_np.fast.pretrain.on_two_cores", one_after_the_other)
        assert loss_and_gradients(model, w) == at_once_loss
    for name, grad in gradients(model).items():
        assert np.array_equal(grad, at_once[name]), name


def test_with_dropout_the_parts_run_in_order_and_repeat():
    """Dropout draws from the model's one generator: the parts run one after the other, so a seed repeats."""
    cfg = mg.GPTConfig(**{**CFG.__dict__, "dropout": 0.2})
    runs = []
    for _ in range(2):
        model = mg.GPT(cfg, dtype=np.float32, seed=3)
        with mg.kernels.using("fast"):
            runs.append((loss_and_gradients(model, windows(6)), gradients(model)))
    assert runs[0][0] == runs[1][0]
    for name, grad in runs[0][1].items():
        assert np.array_equal(grad, runs[1][1][name]), name


def test_the_replica_shares_the_weights_not_the_gradients():
    model = mg.GPT(CFG, dtype=np.float32, seed=0)
    twin = replica(model)
    name = "transformer.h.0.mlp.c_fc.weight"
    assert twin.params[name].data is model.params[name].data
    assert twin.params[name] is not model.params[name]
    twin.params[name].grad = np.ones_like(twin.params[name].data)
    assert model.params[name].grad is None
    model.params[name].data *= 2                      # AdamW updates in place: the replica sees it
    assert np.array_equal(twin.params[name].data, model.params[name].data)


def blas_thread_counts():
    return [info["num_threads"] for info in cores.blas().info()]


def test_threadpoolctl_finds_numpys_blas_once():
    """The controller is built on first use and kept: a step does not scan the process's libraries again."""
    assert cores.blas() is cores.blas()
    assert [info["user_api"] for info in cores.blas().info()] and \
        all(info["user_api"] == "blas" for info in cores.blas().info())


@pytest.mark.skipif(cores.cores() < 2, reason="needs two cores; with one the parts run one after the other")
def test_the_second_part_runs_on_another_thread_with_the_blas_on_half_the_cores():
    seen = {}

    def part(key):
        seen[key] = (threading.get_ident(), blas_thread_counts())
        return key
    with cores.blas_threads(cores.cores()):          # the tests run the BLAS on one thread (conftest): all of them
        before = blas_thread_counts()
        assert cores.on_two_cores(lambda: part("first"), lambda: part("second")) == ("first", "second")
        assert blas_thread_counts() == before == [cores.cores()] * len(before)
    assert seen["first"][0] == threading.get_ident() != seen["second"][0]
    assert seen["first"][1] == seen["second"][1] == [max(1, cores.cores() // 2)] * len(before)


def test_blas_threads_sets_the_count_and_puts_it_back():
    before = blas_thread_counts()
    other = 2 if before[0] == 1 else 1
    with cores.blas_threads(other):
        assert blas_thread_counts() == [other] * len(before)
    assert blas_thread_counts() == before


def test_an_error_in_either_part_is_raised_after_both_finished():
    finished = []

    def slow_second():
        finished.append("second")
        return 2

    def failing():
        raise ValueError("first failed")
    with pytest.raises(ValueError, match="first failed"):
        cores.on_two_cores(failing, slow_second)
    assert finished == ["second"]
    with pytest.raises(ValueError, match="first failed"):
        cores.on_two_cores(lambda: 1, failing)
