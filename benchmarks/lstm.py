"""One LSTM training step: funcnn's hand-written BPTT vs jax.value_and_grad vs torch.nn.LSTM.

Each contender runs forward, backward and an SGD update of a one-layer LSTM with a mean
squared error on its output sequence, in one process, on the same data:

* funcnn: ``funcnn.train.train_step(fn.lstm(H), mse, sgd)``, jit-compiled and donated;
* jax.grad: the same LSTM written as plain JAX (input projection of all steps hoisted out
  of a ``lax.scan`` over ``h W_h`` and the gates, as funcnn does), differentiated by
  ``jax.value_and_grad``, jit-compiled with the same donation;
* torch: ``torch.nn.LSTM(batch_first=True)`` with ``MSELoss`` and ``SGD``, eager, on the
  CPU with as many threads as cores (optional).

The wall times are the best of five interleaved rounds (``bench.interleaved``); the CPU
times (user + system of the process, per step) are the best of five interleaved rounds
too, since they depend less on other jobs sharing the machine. Memory compares
the bytes of funcnn's caches (LSTM and loss) with the residuals ``jax.vjp`` keeps for the
same loss, the parameters excluded (funcnn's backward receives the params).

Usage::

    python benchmarks/lstm.py               # both sizes
    python benchmarks/lstm.py --repeats 10

docs/benchmarks.md records what we measured.
"""

from __future__ import annotations

import argparse
import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import funcnn as fn
from funcnn import losses, optim, train

try:  # run as a script: benchmarks/ is on sys.path
    from bench import _block, funcnn_cache_bytes, interleaved, vjp_residual_bytes
except ImportError:  # imported as benchmarks.lstm
    from benchmarks.bench import _block, funcnn_cache_bytes, interleaved, vjp_residual_bytes

LEARNING_RATE = 0.01
SIZES = [(32, 128, 256, 256), (32, 32, 64, 128)]  # (N, T, F, H)


def jax_lstm(params, x):
    """The plain-JAX LSTM: PyTorch's gates (i, f, g, o), zero initial carry, y (N, T, H)."""
    n, hidden = x.shape[0], params["w_h"].shape[0]
    ax = jnp.einsum("ntf,fg->tng", x, params["w_x"]) + params["b"][None, None, :]

    def step(carry, a):
        h, c = carry
        i, f, g, o = jnp.split(a + h @ params["w_h"], 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    zero = jnp.zeros((n, hidden), x.dtype)
    _, hs = lax.scan(step, (zero, zero), ax)
    return jnp.swapaxes(hs, 0, 1)


def jax_loss(params, x, target):
    return jnp.mean((jax_lstm(params, x) - target) ** 2)


def _inputs(size, dtype=jnp.float32):
    n, t, f, h = size
    k_p, k_x, k_y = jax.random.split(jax.random.PRNGKey(0), 3)
    model = fn.lstm(h)
    params, _ = model.init(k_p, (n, t, f))
    x = jax.random.normal(k_x, (n, t, f), dtype)
    target = jax.random.normal(k_y, (n, t, h), dtype)
    return model, params, x, target


def _funcnn_step(model, params, x, target):
    opt = optim.sgd(LEARNING_RATE)
    step = train.train_step(model, losses.mse(), opt)

    def run(carry):
        p, s = carry
        p, s, _ = step(p, s, x, target)
        return p, s

    p = jax.tree_util.tree_map(jnp.copy, params)
    return run, (p, opt.init(p))


def _jax_step(params, x, target):
    def step(p, x, y):
        value, grads = jax.value_and_grad(jax_loss)(p, x, y)
        return jax.tree_util.tree_map(lambda a, g: a - LEARNING_RATE * g, p, grads), value

    step = jax.jit(step, donate_argnums=0)
    return (lambda p: step(p, x, target)[0]), jax.tree_util.tree_map(jnp.copy, params)


def torch_lstm(torch, params):
    """``torch.nn.LSTM`` holding our params (weight_ih = w_x.T, weight_hh = w_h.T, bias_ih = b)."""
    f, hidden = params["w_x"].shape[0], params["w_h"].shape[0]
    module = torch.nn.LSTM(f, hidden, batch_first=True)
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.tensor(np.asarray(params["w_x"]).T))
        module.weight_hh_l0.copy_(torch.tensor(np.asarray(params["w_h"]).T))
        module.bias_ih_l0.copy_(torch.tensor(np.asarray(params["b"])))
        module.bias_hh_l0.zero_()
    return module


def _torch_step(torch, params, x, target):
    module = torch_lstm(torch, params)
    xt, yt = torch.tensor(np.asarray(x)), torch.tensor(np.asarray(target))
    opt = torch.optim.SGD(module.parameters(), lr=LEARNING_RATE)
    criterion = torch.nn.MSELoss()

    def step(_):
        opt.zero_grad(set_to_none=True)
        criterion(module(xt)[0], yt).backward()
        opt.step()

    return step, None


def check_agreement(size, torch=None, dtype=jnp.float32, tol=1e-4):
    """The three formulations give the same loss and gradients at the same params.

    Returns the largest relative gradient difference of funcnn against jax.grad (and
    checks the loss value against torch's when torch is given)."""
    model, params, x, target = _inputs(size, dtype)
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
    # jitted, as the benchmark runs them (eagerly, every operation would compile on its own)
    value, grads = jax.jit(train.value_and_grad(model, losses.mse()))(params, x, target)
    ref_value, ref_grads = jax.jit(jax.value_and_grad(jax_loss))(params, x, target)
    assert abs(float(value) - float(ref_value)) <= tol * abs(float(ref_value)), (value, ref_value)
    worst = 0.0
    for k in grads:
        ours, ref = np.asarray(grads[k]), np.asarray(ref_grads[k])
        worst = max(worst, float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref))))
    assert worst <= tol, worst
    if torch is not None:
        module = torch_lstm(torch, params)
        with torch.no_grad():
            torch_value = torch.nn.functional.mse_loss(
                module(torch.tensor(np.asarray(x, np.float32)))[0],
                torch.tensor(np.asarray(target, np.float32)),
            )
        assert abs(torch_value.item() - float(value)) <= 1e-4 * abs(float(value))
    return worst


def cache_bytes(size) -> tuple[int, int]:
    """(funcnn's cache bytes for the LSTM and the loss, jax.vjp's residual bytes for the
    same loss without the parameter arrays)."""
    model, params, x, target = _inputs(size)
    ours = funcnn_cache_bytes(model, losses.mse(), params, x, target)
    _, residuals = vjp_residual_bytes(jax_loss, params, x, target)
    return ours, residuals


def cpu_seconds(contenders: dict, rounds: int = 5, per_round: int = 3) -> dict[str, float]:
    """Process CPU time (user + system, all threads) per step, best of interleaved rounds.

    On a machine shared with other jobs the wall time of a step depends on how much of
    the CPU the others leave; the CPU time a step consumes depends much less on it, so it
    is reported next to the wall time. (It counts threads that spin while they wait, which
    makes it an upper bound of the work done.)"""
    carries = {name: carry for name, (_, carry) in contenders.items()}
    best = {name: float("inf") for name in contenders}
    for _ in range(rounds):
        for name, (step, _) in contenders.items():
            carry = carries[name]
            before = os.times()
            for _ in range(per_round):
                carry = _block(step(carry))
            after = os.times()
            carries[name] = carry
            used = after.user - before.user + after.system - before.system
            best[name] = min(best[name], used / per_round)
    return best


def measure(size, repeats: int, torch=None) -> dict:
    model, params, x, target = _inputs(size)

    def contenders():  # fresh carries: the steps donate (consume) the params they are given
        steps = {
            "funcnn": _funcnn_step(model, params, x, target),
            "jax": _jax_step(params, x, target),
        }
        if torch is not None:
            steps["torch"] = _torch_step(torch, params, x, target)
        return steps

    times = interleaved(contenders(), repeats)
    cpu = cpu_seconds(contenders())
    ours, residuals = cache_bytes(size)
    return {**times, "cpu": cpu, "cache": ours, "residuals": residuals}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    except ImportError:
        torch = None
        print("PyTorch is not installed: the torch column is skipped.")

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}"
        + (f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else "")
    )
    rows = []
    for size in SIZES:
        print(f"running (N, T, F, H) = {size} ...", flush=True)
        check_agreement(size, torch)
        rows.append((size, measure(size, args.repeats, torch)))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}\n")
    print(
        "| (N, T, F, H) | time | funcnn ms | jax.grad ms | funcnn / jax.grad | torch ms "
        "| funcnn / torch |"
    )
    print("|---|---|---|---|---|---|---|")
    for size, r in rows:
        for label, t in (("wall", r), ("CPU", r["cpu"])):
            t_torch = t.get("torch")
            torch_ms = f"{t_torch * 1e3:.1f}" if t_torch else "n/a"
            torch_ratio = f"{t['funcnn'] / t_torch:.2f}" if t_torch else "n/a"
            print(
                f"| {size} | {label} | {t['funcnn'] * 1e3:.1f} | {t['jax'] * 1e3:.1f} "
                f"| {t['funcnn'] / t['jax']:.2f} | {torch_ms} | {torch_ratio} |"
            )
    print()
    print("| (N, T, F, H) | funcnn cache MB | jax.vjp residuals MB | cache / residuals |")
    print("|---|---|---|---|")
    mb = 1 / 2**20
    for size, r in rows:
        print(
            f"| {size} | {r['cache'] * mb:.2f} | {r['residuals'] * mb:.2f} "
            f"| {r['cache'] / r['residuals']:.2f} |"
        )


if __name__ == "__main__":
    main()
