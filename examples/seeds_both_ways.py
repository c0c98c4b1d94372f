"""The two networks funcnn was born from, written both ways and trained side by side.

1. The one-hidden-layer perceptron with a squared loss, built from Affine, ReLU and
   SquaredLoss layer objects that remember their inputs (a classic teaching lab).
2. The Operation / ParamOperation chain: WeightMultiply, BiasAdd and Sigmoid operations
   grouped into Dense layers, a NeuralNetwork, a mean-squared-error loss and SGD.

Each is written once as stateful NumPy classes, as in those notebooks, and once with
funcnn's pure layers. Both start from the same weights, see the same batches and take
the same SGD steps; the script prints both loss columns and their largest difference.
Everything is float64, so "the same numbers" means agreement to about 1e-15.

Two repairs to the notebooks, so that the stateful side is correct: the first
WeightMultiply read a global ``W`` in its backward (``self.param`` here), and the lab's
layers took scalars (the vectorized Affine here is the lab's bonus task: a batch of rows).

Run:  python examples/seeds_both_ways.py [--epochs 30]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import funcnn as fn

jax.config.update("jax_enable_x64", True)


# === 1. The one-hidden-layer perceptron, stateful =========================================


class Affine:
    """a = x w + b. Keeps x, w and b for backward (the lab's `self.x = x`)."""

    def forward(self, x, w, b):
        self.x, self.w, self.b = x, w, b
        return x @ w + b

    def backward(self, da):
        dx = da @ self.w.T
        dw = self.x.T @ da
        db = da.sum(axis=0)  # b was added to every row
        return dx, dw, db


class ReLU:
    def forward(self, a):
        self.a = a
        return np.maximum(a, 0)

    def backward(self, dh):
        return dh * (self.a > 0)


class SquaredLoss:
    """mean over the batch of (y_hat - y)^2 (for one example: the lab's (y_hat - y)^2)."""

    def forward(self, y_hat, y):
        self.r = y_hat - y
        return np.mean(self.r**2)

    def backward(self, dl=1.0):
        return dl * 2 * self.r / self.r.size


class Perceptron:
    """L = SquaredLoss(Affine(ReLU(Affine(x, w1, b1)), w2, b2), y), as in the lab."""

    def __init__(self, w1, b1, w2, b2):
        self.params = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
        self.a1, self.relu, self.a2, self.loss = Affine(), ReLU(), Affine(), SquaredLoss()

    def forward(self, x, y):
        p = self.params
        h = self.relu.forward(self.a1.forward(x, p["w1"], p["b1"]))
        return self.loss.forward(self.a2.forward(h, p["w2"], p["b2"]), y)

    def backward(self, dl=1.0):
        dh, dw2, db2 = self.a2.backward(self.loss.backward(dl))
        _, dw1, db1 = self.a1.backward(self.relu.backward(dh))
        self.grads = {"w1": dw1, "b1": db1, "w2": dw2, "b2": db2}  # kept on the object

    def sgd_step(self, lr):
        for k in self.params:
            self.params[k] = self.params[k] - lr * self.grads[k]


# === 2. The Operation / ParamOperation chain, stateful ====================================


class Operation:
    """Stores its input and output on self; backward reads them back."""

    def forward(self, input_):
        self.input_ = input_
        self.output = self._output()
        return self.output

    def backward(self, output_grad):
        assert self.output.shape == output_grad.shape
        self.input_grad = self._input_grad(output_grad)
        assert self.input_grad.shape == self.input_.shape
        return self.input_grad


class ParamOperation(Operation):
    def __init__(self, param):
        self.param = param

    def backward(self, output_grad):
        assert self.output.shape == output_grad.shape
        self.input_grad = self._input_grad(output_grad)
        self.param_grad = self._param_grad(output_grad)
        assert self.input_grad.shape == self.input_.shape
        assert self.param_grad.shape == self.param.shape
        return self.input_grad


class WeightMultiply(ParamOperation):
    def _output(self):
        return self.input_ @ self.param

    def _input_grad(self, output_grad):
        return output_grad @ self.param.T

    def _param_grad(self, output_grad):
        return self.input_.T @ output_grad


class BiasAdd(ParamOperation):
    def __init__(self, b):
        assert b.shape[0] == 1  # a (1, neurons) row
        super().__init__(b)

    def _output(self):
        return self.input_ + self.param

    def _input_grad(self, output_grad):
        return np.ones_like(self.input_) * output_grad

    def _param_grad(self, output_grad):
        return output_grad.sum(axis=0, keepdims=True)


class Sigmoid(Operation):
    def _output(self):
        return 1.0 / (1.0 + np.exp(-self.input_))

    def _input_grad(self, output_grad):
        return self.output * (1.0 - self.output) * output_grad


class Linear(Operation):
    def _output(self):
        return self.input_

    def _input_grad(self, output_grad):
        return output_grad


class Dense:
    """A layer: WeightMultiply, BiasAdd, then an activation, made on first use."""

    def __init__(self, neurons, activation, w, b):
        self.neurons, self.activation, self.w, self.b = neurons, activation, w, b
        self.first = True

    def _setup_layer(self, input_):
        assert self.w.shape == (input_.shape[1], self.neurons)
        self.operations = [WeightMultiply(self.w), BiasAdd(self.b), self.activation]

    def forward(self, input_):
        if self.first:
            self._setup_layer(input_)
            self.first = False
        for operation in self.operations:
            input_ = operation.forward(input_)
        self.output = input_
        return self.output

    def backward(self, output_grad):
        for operation in reversed(self.operations):
            output_grad = operation.backward(output_grad)
        self.params = [op.param for op in self.operations if isinstance(op, ParamOperation)]
        self.param_grads = [
            op.param_grad for op in self.operations if isinstance(op, ParamOperation)
        ]
        return output_grad


class MeanSquaredError:
    def forward(self, prediction, target):
        self.prediction, self.target = prediction, target
        return np.sum((prediction - target) ** 2) / prediction.shape[0]

    def backward(self):
        return 2.0 * (self.prediction - self.target) / self.prediction.shape[0]


class NeuralNetwork:
    def __init__(self, layers, loss):
        self.layers, self.loss = layers, loss

    def train_batch(self, x, y):
        for layer in self.layers:
            x = layer.forward(x)
        value = self.loss.forward(x, y)
        grad = self.loss.backward()
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        return value


class SGD:
    def __init__(self, lr):
        self.lr = lr

    def step(self, net):
        for layer in net.layers:
            for param, grad in zip(layer.params, layer.param_grads, strict=True):
                param -= self.lr * grad  # in place: the operations hold these arrays


# === the same two networks with funcnn ===================================================


def funcnn_trainer(model, params, lr):
    """A function (x, y) -> loss that takes one jitted SGD step on ``params``."""
    opt = fn.optim.sgd(lr)
    value_and_grad = fn.train.value_and_grad(model, fn.losses.mse())

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = value_and_grad(params, x, y)  # the hand-written backward passes
        updates, opt_state = opt.update(grads, opt_state, params)
        return fn.optim.apply_updates(params, updates), opt_state, loss

    carry = {"params": params, "opt_state": opt.init(params)}

    def train_batch(x, y):
        carry["params"], carry["opt_state"], loss = step(carry["params"], carry["opt_state"], x, y)
        return float(loss)

    return train_batch, carry


def side_by_side(title, stateful_batch, funcnn_batch, x, y, epochs, batch=16):
    """Train both on the same batches; print the mean loss per epoch of each."""
    order = np.random.default_rng(1)  # the same shuffles for both
    rows = []
    for epoch in range(1, epochs + 1):
        parts = [order.permutation(len(x))[i : i + batch] for i in range(0, len(x), batch)]
        a = b = 0.0
        for i in parts:
            a += stateful_batch(x[i], y[i]) / len(parts)
            b += funcnn_batch(x[i], y[i]) / len(parts)
        rows.append((epoch, a, b))
    print(title)
    print(f"   {'epoch':>5}  {'stateful loss':>18}  {'funcnn loss':>18}  {'|difference|':>12}")
    shown = sorted({1, *range(5, epochs + 1, 5), epochs})
    for epoch, a, b in rows:
        if epoch in shown:
            print(f"   {epoch:>5}  {a:18.15f}  {b:18.15f}  {abs(a - b):12.1e}")
    gap = max(abs(a - b) for _, a, b in rows)
    print(f"   max |stateful - funcnn| over all {epochs} epochs = {gap:.1e}")
    return gap


def main(epochs):
    f64 = jnp.float64
    relu_net = fn.sequential(fn.dense(1, dtype=f64), fn.relu(), fn.dense(1, dtype=f64))

    # --- 1a. the lab's numeric example: L(x=2, y=1, w1=-1, b1=1, w2=-2, b2=1.5) ---
    one = [np.array([[-1.0]]), np.array([1.0]), np.array([[-2.0]]), np.array([1.5])]
    net = Perceptron(*one)
    loss = net.forward(np.array([[2.0]]), np.array([[1.0]]))
    net.backward()
    params = ({"w": one[0], "b": one[1]}, (), {"w": one[2], "b": one[3]})
    value, grads = fn.train.value_and_grad(relu_net, fn.losses.mse())(
        params, np.array([[2.0]]), np.array([[1.0]])
    )
    print("1. The one-hidden-layer perceptron, Affine -> ReLU -> Affine -> SquaredLoss")
    print("   the lab's example x=2, y=1, w1=-1, b1=1, w2=-2, b2=1.5:")
    g = net.grads
    mine = [g["w1"][0, 0], g["b1"][0], g["w2"][0, 0], g["b2"][0]]
    ours = [grads[0]["w"][0, 0], grads[0]["b"][0], grads[2]["w"][0, 0], grads[2]["b"][0]]
    for who, value_, (dw1, db1, dw2, db2) in [("stateful", loss, mine), ("funcnn", value, ours)]:
        print(
            f"   {who:<8}  loss {float(value_):.4f}  dw1 {float(dw1):+.1f}  db1 {float(db1):+.1f}"
            f"  dw2 {float(dw2):+.1f}  db2 {float(db2):+.1f}"
        )
    print("   (a1 = 2 * -1 + 1 = -1: the ReLU is off, so nothing reaches w1 and b1)\n")

    # --- a small regression problem for both networks ---
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3))
    y = np.sin(x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3]
    lr = 0.05

    # --- 1b. the perceptron (8 hidden units), trained both ways ---
    w1, b1 = rng.normal(size=(3, 8)) * 0.5, np.zeros(8)
    w2, b2 = rng.normal(size=(8, 1)) * 0.5, np.zeros(1)
    net = Perceptron(w1, b1, w2, b2)

    def stateful_batch(xb, yb):
        value = net.forward(xb, yb)
        net.backward()
        net.sgd_step(lr)
        return value

    mlp = fn.sequential(fn.dense(8, dtype=f64), fn.relu(), fn.dense(1, dtype=f64))
    funcnn_batch, perceptron = funcnn_trainer(mlp, ({"w": w1, "b": b1}, (), {"w": w2, "b": b2}), lr)
    gap1 = side_by_side(
        "   trained on 64 examples, 4 batches of 16 per epoch, SGD lr 0.05:",
        stateful_batch,
        funcnn_batch,
        x,
        y,
        epochs,
    )
    w_gap = np.max(np.abs(net.params["w1"] - perceptron["params"][0]["w"]))
    print(f"   first-layer weights after training: max |stateful - funcnn| = {w_gap:.1e}\n")

    # --- 2. the Operation chain: Dense(13, Sigmoid) -> Dense(1, Linear) with MSE ---
    print("2. The Operation / ParamOperation chain: Dense(13, Sigmoid) -> Dense(1, Linear), MSE")
    w1, b1 = rng.normal(size=(3, 13)) * 0.5, np.zeros((1, 13))
    w2, b2 = rng.normal(size=(13, 1)) * 0.5, np.zeros((1, 1))
    chain = NeuralNetwork(
        [Dense(13, Sigmoid(), w1.copy(), b1.copy()), Dense(1, Linear(), w2.copy(), b2.copy())],
        MeanSquaredError(),
    )
    sgd = SGD(lr)

    def chain_batch(xb, yb):
        value = chain.train_batch(xb, yb)
        sgd.step(chain)
        return value

    model = fn.sequential(fn.dense(13, dtype=f64), fn.sigmoid(), fn.dense(1, dtype=f64))
    # BiasAdd keeps a (1, neurons) row; funcnn's dense keeps b as a (neurons,) vector.
    funcnn_batch, trained = funcnn_trainer(
        model, ({"w": w1, "b": b1[0]}, (), {"w": w2, "b": b2[0]}), lr
    )
    gap2 = side_by_side(
        "   trained on the same data, 4 batches of 16 per epoch, SGD lr 0.05:",
        chain_batch,
        funcnn_batch,
        x,
        y,
        epochs,
    )
    w_gap = np.max(np.abs(chain.layers[0].operations[0].param - trained["params"][0]["w"]))
    print(f"   first-layer weights after training: max |stateful - funcnn| = {w_gap:.1e}")
    print(f"\nmax loss difference, both networks, all epochs = {max(gap1, gap2):.1e}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    main(parser.parse_args().epochs)
