"""Training-step speed and cache memory: funcnn vs jax.value_and_grad vs PyTorch eager.

Every model is run three ways in one process, on the same data, with SGD and softmax
cross-entropy:

* funcnn: ``funcnn.train.train_step`` (forward, hand-written backward, SGD), jit-compiled;
* jax.grad: the same model written as plain ``jax.numpy``/``lax`` code, differentiated by
  ``jax.value_and_grad``, jit-compiled with the same donation;
* torch: PyTorch eager on the CPU with as many threads as JAX uses (optional).

Usage::

    python benchmarks/bench.py                 # all models
    python benchmarks/bench.py --models mlp    # just the MLP
    python benchmarks/bench.py --repeats 50

It prints Markdown tables; docs/benchmarks.md records what we measured.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import funcnn as fn
from funcnn import losses, optim, train

LEARNING_RATE = 0.01


# --- timing ------------------------------------------------------------------------------


def _block(tree):
    for leaf in jax.tree_util.tree_leaves(tree):
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
    return tree


def median_seconds(step, carry, repeats: int, warmup: int = 3) -> tuple[float, object]:
    """Median wall time of ``carry = step(carry)``; the carry threads donated buffers."""
    for _ in range(warmup):
        carry = _block(step(carry))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        carry = _block(step(carry))
        times.append(time.perf_counter() - start)
    return statistics.median(times), carry


def interleaved(contenders: dict, repeats: int, rounds: int = 5) -> dict[str, float]:
    """Time ``{name: (step, carry)}`` in alternating rounds and keep each one's best median,
    so that a burst of load on the machine does not land on one contender only."""
    best = {name: float("inf") for name in contenders}
    carries = {name: carry for name, (_, carry) in contenders.items()}
    for _ in range(rounds):
        for name, (step, _) in contenders.items():
            t, carries[name] = median_seconds(step, carries[name], max(repeats // rounds, 3))
            best[name] = min(best[name], t)
    return best


def same_args(fn):
    """Time ``fn(*args)`` with :func:`interleaved`: the carry is ``args``, passed unchanged
    to every call, and each call's result is waited for."""

    def step(args):
        _block(fn(*args))
        return args

    return step


def matmul_rate(repeats: int) -> float:
    """The machine's float32 matmul rate in GFLOP/s (jitted 1024^3 product, best of runs)."""
    n = 1024
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    mm = jax.jit(lambda a, b: a @ b)
    _block(mm(a, b))
    best = min(_timed(lambda: mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(thunk) -> float:
    start = time.perf_counter()
    _block(thunk())
    return time.perf_counter() - start


# --- memory ------------------------------------------------------------------------------


def _nbytes(tree) -> int:
    return sum(
        leaf.size * leaf.dtype.itemsize
        for leaf in jax.tree_util.tree_leaves(tree)
        if hasattr(leaf, "dtype")
    )


def funcnn_cache_bytes(model, loss, params, x, y) -> int:
    """Bytes of the caches kept between the forward and backward calls (model + loss)."""

    def forward(params, x, y):
        out, cache = model.forward(params, x)
        return cache, loss.forward(out, y)[1]

    return _nbytes(jax.eval_shape(forward, params, x, y))


def vjp_residual_bytes(loss_fn, params, x, y) -> tuple[int, int]:
    """Bytes ``jax.vjp`` keeps for ``loss_fn(params)``: (all residuals, residuals that are
    not the parameters themselves)."""
    _, vjp_fn = jax.vjp(lambda p: loss_fn(p, x, y), params)
    residuals = jax.tree_util.tree_leaves(vjp_fn)
    param_ptrs = {p.unsafe_buffer_pointer() for p in jax.tree_util.tree_leaves(params)}
    total = _nbytes(residuals)
    not_params = _nbytes(
        [
            r
            for r in residuals
            if hasattr(r, "unsafe_buffer_pointer") and r.unsafe_buffer_pointer() not in param_ptrs
        ]
    )
    return total, not_params


# --- models ------------------------------------------------------------------------------


def _cross_entropy(logits, labels):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def _sgd_jax(loss_fn):
    """The jax.grad baseline: value_and_grad + the same SGD update, jit with donation."""

    def step(params, x, y):
        value, grads = jax.value_and_grad(loss_fn)(params, x, y)
        return jax.tree_util.tree_map(lambda p, g: p - LEARNING_RATE * g, params, grads), value

    return jax.jit(step, donate_argnums=0)


def mlp_case(batch: int):
    sizes = (784, 512, 512, 10)
    model = fn.sequential(fn.dense(512), fn.relu(), fn.dense(512), fn.relu(), fn.dense(10))

    def jax_logits(params, x):
        h = x
        for i, p in enumerate(params):
            h = h @ p["w"] + p["b"]
            if i < len(params) - 1:
                h = jnp.maximum(h, 0)
        return h

    def torch_model(torch):
        return torch.nn.Sequential(
            torch.nn.Linear(784, 512),
            torch.nn.ReLU(),
            torch.nn.Linear(512, 512),
            torch.nn.ReLU(),
            torch.nn.Linear(512, 10),
        )

    def to_jax_params(params):
        return [params[0], params[2], params[4]]

    flops = 6 * batch * sum(a * b for a, b in itertools.pairwise(sizes))
    # forward 2*B*sum(in*out); backward: dW and dx for every layer but the first's dx.
    flops -= 2 * batch * sizes[0] * sizes[1]
    return dict(
        name=f"MLP 784-512-512-10, batch {batch}",
        model=model,
        in_shape=(batch, 784),
        jax_logits=jax_logits,
        to_jax_params=to_jax_params,
        torch_model=torch_model,
        torch_input=lambda x: x,
        flops=flops,
    )


def cnn_case(batch: int = 64):
    model = fn.sequential(
        fn.conv2d(32, 3, padding="SAME"),
        fn.relu(),
        fn.max_pool2d(2),
        fn.conv2d(64, 3, padding="SAME"),
        fn.relu(),
        fn.max_pool2d(2),
        fn.flatten(),
        fn.dense(10),
    )

    def conv(x, p):
        y = lax.conv_general_dilated(
            x, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y + p["b"]

    def pool(x):  # the idiomatic (flax-style) max-pool: reduce_window, autodiff backward
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    def jax_logits(params, x):
        h = pool(jax.nn.relu(conv(x, params[0])))
        h = pool(jax.nn.relu(conv(h, params[1])))
        h = h.reshape(h.shape[0], -1)
        return h @ params[2]["w"] + params[2]["b"]

    def torch_model(torch):
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(64 * 7 * 7, 10),
        )

    def to_jax_params(params):
        return [params[0], params[3], params[7]]

    conv_flops = 2 * batch * (28 * 28 * 9 * 1 * 32 + 14 * 14 * 9 * 32 * 64)
    dense_flops = 2 * batch * 3136 * 10
    flops = 3 * (conv_flops + dense_flops) - 2 * batch * 28 * 28 * 9 * 32  # no dx for the image
    return dict(
        name=f"CNN 28x28x1 conv32-pool-conv64-pool-dense10, batch {batch}",
        model=model,
        in_shape=(batch, 28, 28, 1),
        jax_logits=jax_logits,
        to_jax_params=to_jax_params,
        torch_model=torch_model,
        torch_input=lambda x: x.permute(0, 3, 1, 2).contiguous(),
        flops=flops,
    )


# --- running one case ----------------------------------------------------------------------


def run_case(case, repeats: int, torch, rate: float) -> dict:
    model, batch = case["model"], case["in_shape"][0]
    key_p, key_x, key_y = jax.random.split(jax.random.PRNGKey(0), 3)
    params, _ = model.init(key_p, case["in_shape"])
    x = jax.random.normal(key_x, case["in_shape"], jnp.float32)
    y = jax.random.randint(key_y, (batch,), 0, 10)
    loss = losses.softmax_cross_entropy()

    # funcnn: the library's own train step.
    opt = optim.sgd(LEARNING_RATE)
    step = train.train_step(model, loss, opt)
    fn_params = jax.tree_util.tree_map(jnp.copy, params)

    def fn_step(carry):
        p, s = carry
        p, s, _ = step(p, s, x, y)
        return p, s

    # jax.grad of the same model written with plain jax.numpy / lax.
    def jax_loss(p, x, y):
        return _cross_entropy(case["jax_logits"](p, x), y)

    jax_step = _sgd_jax(jax_loss)
    jax_params = jax.tree_util.tree_map(jnp.copy, case["to_jax_params"](params))
    contenders = {
        "funcnn": (fn_step, (fn_params, opt.init(fn_params))),
        "jax": (lambda p: jax_step(p, x, y)[0], jax_params),
    }
    if torch is not None:
        contenders["torch"] = torch_step(torch, case, x, y)
    times = interleaved(contenders, repeats)
    t_funcnn, t_jax, t_torch = times["funcnn"], times["jax"], times.get("torch")

    # Correctness: both steps give the same loss value on the same params.
    v_funcnn = train.value_and_grad(model, loss)(params, x, y)[0]
    v_jax = jax_loss(case["to_jax_params"](params), x, y)
    assert abs(float(v_funcnn) - float(v_jax)) < 1e-4, (v_funcnn, v_jax)

    cache = funcnn_cache_bytes(model, loss, params, x, y)
    residual_all, residual_no_params = vjp_residual_bytes(
        jax_loss, case["to_jax_params"](params), x, y
    )
    gflops = case["flops"] / t_funcnn / 1e9
    return dict(
        name=case["name"],
        funcnn=t_funcnn,
        jax=t_jax,
        torch=t_torch,
        gflops=gflops,
        rate=rate,
        cache=cache,
        residual_all=residual_all,
        residual_no_params=residual_no_params,
    )


def torch_step(torch, case, x, y):
    """PyTorch eager: the same model, loss and SGD; returns ``(step, carry)`` for timing."""
    torch.manual_seed(0)
    net = case["torch_model"](torch)
    xt = case["torch_input"](torch.from_numpy(np.array(x)))
    yt = torch.from_numpy(np.array(y)).long()
    opt = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE)
    criterion = torch.nn.CrossEntropyLoss()

    def step(_):
        opt.zero_grad(set_to_none=True)
        value = criterion(net(xt), yt)
        value.backward()
        opt.step()
        return None

    return step, None


# --- report ------------------------------------------------------------------------------


def report(results, rate) -> str:
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, "
        f"float32 matmul rate {rate:.1f} GFLOP/s (1024^3, jitted)",
        "",
        "| model | funcnn ms | jax.grad ms | funcnn / jax.grad | torch eager ms "
        "| funcnn / torch | funcnn GFLOP/s | of matmul rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        torch_ms = f"{r['torch'] * 1e3:.3f}" if r["torch"] else "n/a"
        torch_ratio = f"{r['funcnn'] / r['torch']:.2f}" if r["torch"] else "n/a"
        lines.append(
            f"| {r['name']} | {r['funcnn'] * 1e3:.3f} | {r['jax'] * 1e3:.3f} "
            f"| {r['funcnn'] / r['jax']:.3f} | {torch_ms} | {torch_ratio} "
            f"| {r['gflops']:.1f} | {r['gflops'] / r['rate']:.0%} |"
        )
    lines += [
        "",
        "| model | funcnn cache MB | jax.vjp residuals MB (all / without params) "
        "| ratio (all / without params) |",
        "|---|---|---|---|",
    ]
    for r in results:
        mb = 1 / 2**20
        lines.append(
            f"| {r['name']} | {r['cache'] * mb:.2f} | {r['residual_all'] * mb:.2f} / "
            f"{r['residual_no_params'] * mb:.2f} | {r['cache'] / r['residual_all']:.2f} / "
            f"{r['cache'] / r['residual_no_params']:.2f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    except ImportError:
        torch = None
        print(
            "PyTorch is not installed: the torch column is skipped "
            "(pip install -e '.[bench]' to include it)."
        )

    rate = matmul_rate(10)
    cases = []
    if "mlp" in args.models:
        cases += [mlp_case(64), mlp_case(1024)]
    if "cnn" in args.models:
        cases.append(cnn_case(64))
    results = []
    for case in cases:
        print(f"running {case['name']} ...", flush=True)
        results.append(run_case(case, args.repeats, torch, rate))
    print()
    print(report(results, rate))


if __name__ == "__main__":
    main()
