"""The shared model under threads: hooked passes never see another thread's forward."""

import threading
import time

import numpy as np
import pytest
import torch

from gradviz.methods import ModelOutputs, run_method
from gradviz.models.zoo import random_model


def test_forward_waits_while_another_thread_holds_the_model():
    model = random_model("mnist-cnn")
    x = torch.rand(4, 1, 28, 28)
    done = threading.Event()
    with model.lock:  # as a hooked pass (GAIA, engine, captum) does
        t = threading.Thread(target=lambda: (model(x), done.set()))
        t.start()
        time.sleep(0.3)
        assert not done.is_set()  # the other forward did not run through our hooks
    t.join(10)
    assert done.is_set()


@pytest.mark.slow
def test_concurrent_gradient_methods_give_single_thread_results():
    model = random_model("mnist-cnn")
    xs = [torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    methods = ["gaia_z", "gaia_a", "odin", "confounding", "grad_l2"]
    expected = [{m: run_method(m, ModelOutputs.from_model(model, x)).numpy() for m in methods} for x in xs]
    results: dict[int, dict] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(2):  # no explicit lock: the methods and the model's forward take it themselves
                batch = ModelOutputs.from_model(model, xs[i])
                results[i] = {m: run_method(m, batch).numpy() for m in methods}
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for i in range(4):
        for m in methods:
            np.testing.assert_allclose(results[i][m], expected[i][m], rtol=1e-5, atol=1e-6)
