"""One tiny network written twice: stateful NumPy objects, then funcnn's pure layers.

The network is 3 -> dense(4) -> tanh -> dense(2), trained with mean squared error.
First we check that both versions compute the same gradients. Then we show three things
the pure version does without effort and the stateful one gets wrong or cannot do:

  (a) two forward passes before a backward pass (micro-batches),
  (b) jax.jit of forward and of backward,
  (c) one set of parameters used by two models.

Run:  python examples/stateful_vs_pure.py
"""

import jax
import jax.numpy as jnp
import numpy as np

import funcnn as fn

jax.config.update("jax_enable_x64", True)  # float64 throughout: agreement means ~1e-16


# --- the stateful way: every object remembers what its backward will need -------------


class Dense:
    def __init__(self, w, b):
        self.w, self.b = w, b

    def forward(self, x):
        self.x = x  # kept for backward; the next forward overwrites it
        return x @ self.w + self.b

    def backward(self, dy):
        self.dw, self.db = self.x.T @ dy, dy.sum(axis=0)  # stored, not returned
        return dy @ self.w.T


class Tanh:
    def forward(self, x):
        self.y = np.tanh(x)
        return self.y

    def backward(self, dy):
        return dy * (1 - self.y**2)


class Net:
    def __init__(self, *layers):
        self.layers = layers

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def grads(self):
        return [(l.dw, l.db) for l in self.layers if isinstance(l, Dense)]


# --- the pure way: parameters and caches are values that you hold --------------------

f64 = jnp.float64
model = fn.sequential(fn.dense(4, dtype=f64), fn.tanh(), fn.dense(2, dtype=f64))
mse = fn.losses.mse()

rng = np.random.default_rng(0)
w1, b1 = rng.normal(size=(3, 4)), rng.normal(size=4)
w2, b2 = rng.normal(size=(4, 2)), rng.normal(size=2)
x1, t1 = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))  # micro-batch 1
x2, t2 = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))  # micro-batch 2

net = Net(Dense(w1, b1), Tanh(), Dense(w2, b2))
params = (
    {"w": jnp.asarray(w1), "b": jnp.asarray(b1)},
    (),
    {"w": jnp.asarray(w2), "b": jnp.asarray(b2)},
)
template, _ = model.init(jax.random.PRNGKey(0), (5, 3))
assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(template)


def loss_grad(y, t):
    """dL/dy of the mean squared error."""
    _, cache = mse.forward(jnp.asarray(y), jnp.asarray(t))
    return mse.backward(cache)


def gap(a, b):
    return max(
        float(jnp.max(jnp.abs(u - v)))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def as_pure(stateful_grads):
    (dw1, db1), (dw2, db2) = stateful_grads
    return ({"w": dw1, "b": db1}, (), {"w": dw2, "b": db2})


print("1. Same network, same gradients")
net.backward(np.asarray(loss_grad(net.forward(x1), t1)))
stateful = as_pure(net.grads())
y, cache = model.forward(params, x1)
_, pure = model.backward(params, cache, loss_grad(y, t1))
for name, a, b in [("w1", 0, "w"), ("b1", 0, "b"), ("w2", 2, "w"), ("b2", 2, "b")]:
    print(f"   {name}: max |stateful - funcnn| = {gap(stateful[a][b], pure[a][b]):.1e}")
assert gap(stateful, pure) < 1e-12

print("\n(a) Two forward passes before any backward pass (two micro-batches)")
y1 = net.forward(x1)
net.forward(x2)  # overwrites the stored x (and y) on every layer
net.backward(np.asarray(loss_grad(y1, t1)))  # no error: the shapes still fit
print(f"   stateful, batch 1: off by {gap(as_pure(net.grads()), pure):.2f} (silently used batch 2)")
(y1, c1), (y2, c2) = model.forward(params, x1), model.forward(params, x2)  # two caches
_, g1 = model.backward(params, c1, loss_grad(y1, t1))
_, g2 = model.backward(params, c2, loss_grad(y2, t2))
print(f"   funcnn,   batch 1: off by {gap(g1, pure):.1e} (cache c1 still holds batch 1)")
xs, ts = np.concatenate([x1, x2]), np.concatenate([t1, t2])
y, c = model.forward(params, xs)
_, full = model.backward(params, c, loss_grad(y, ts))
accumulated = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
print(f"   mean of the two micro-batch gradients vs one batch of 10: {gap(accumulated, full):.1e}")
assert gap(g1, pure) < 1e-12 and gap(accumulated, full) < 1e-12

print("\n(b) jax.jit of forward and of backward")
forward, backward = jax.jit(model.forward), jax.jit(model.backward)
yj, cj = forward(params, x1)  # the cache comes out of the compiled function as a value
_, gj = backward(params, cj, loss_grad(yj, t1))
print(f"   jitted vs eager gradients: {gap(gj, pure):.1e}")
shapes = ", ".join(f"{l.name} {a.shape}" for l, a in zip(model.children, cj, strict=True))
print(f"   the cache, one entry per child: {shapes}; {sum(a.nbytes for a in cj)} bytes")
assert gap(gj, pure) < 1e-12
layer = Dense(w1, b1)
jax.jit(layer.forward)(x1)  # runs, but stores a tracer (a placeholder) in layer.x
try:
    layer.backward(np.ones((5, 4)))
except Exception as err:  # the tracer escaped the compiled function
    print(f"   stateful: jit(forward) then backward raises {type(err).__name__}")
else:
    raise AssertionError("expected the leaked tracer to be caught")

print("\n(c) One set of parameters in two models")
# A second model shares the first dense layer (a "trunk") and has its own 1-output head.
model_b = fn.sequential(fn.dense(4, dtype=f64), fn.tanh(), fn.dense(1, dtype=f64))
head_b = model_b.init(jax.random.PRNGKey(1), (5, 3))[0][2]
params_b = (params[0], (), head_b)  # the same arrays, nothing copied
ta = rng.normal(size=(5, 1))
ya, ca = model.forward(params, x1)
yb, cb = model_b.forward(params_b, x2)
_, ga = model.backward(params, ca, loss_grad(ya, t1))
_, gb = model_b.backward(params_b, cb, loss_grad(yb, ta))
trunk = jax.tree.map(jnp.add, ga[0], gb[0])  # the fan-out rule: shared use -> add


def reference(p):  # plain autodiff of the summed loss, only to check the line above
    h1, h2 = jnp.tanh(x1 @ p["w"] + p["b"]), jnp.tanh(x2 @ p["w"] + p["b"])
    out_a = h1 @ params[2]["w"] + params[2]["b"]
    out_b = h2 @ head_b["w"] + head_b["b"]
    return jnp.mean((out_a - t1) ** 2) + jnp.mean((out_b - ta) ** 2)


expected = jax.grad(reference)(params[0])
print(f"   funcnn: trunk gradient ga[0] + gb[0] vs jax.grad: {gap(trunk, expected):.1e}")
assert gap(trunk, expected) < 1e-12
shared = Dense(w1, b1)
net_a = Net(shared, Tanh(), Dense(w2, b2))
net_b = Net(shared, Tanh(), Dense(np.asarray(head_b["w"]), np.asarray(head_b["b"])))
net_a.backward(np.asarray(loss_grad(net_a.forward(x1), t1)))
net_b.backward(np.asarray(loss_grad(net_b.forward(x2), ta)))  # one pass each, in order
print(
    f"   stateful: shared.dw is off by {gap(shared.dw, trunk['w']):.2f} "
    f"(model b's backward replaced model a's contribution)"
)
print("\nThe pure version needs no bookkeeping: every cache and gradient is a value you hold.")
