"""funcnn.io: every dtype round-trips, templates, refusals, damaged files, temporaries, modes."""

import fcntl
import hashlib
import io as pyio
import json
import os
import pickle
import stat
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import funcnn as fn
from funcnn import io as fio
from funcnn.io import load, save

INVALID = r"is not a valid funcnn checkpoint: "

# Every dtype JAX arrays can have on CPU; the float6 formats exist in NumPy (ml_dtypes) only.
JAX_DTYPES = [
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128", "bfloat16",
    "float8_e3m4", "float8_e4m3", "float8_e4m3b11fnuz", "float8_e4m3fn", "float8_e4m3fnuz",
    "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn",
    "int4", "uint4", "int2", "uint2",
]  # fmt: skip
NUMPY_ONLY_DTYPES = ["float6_e2m3fn", "float6_e3m2fn"]


def raw(a):
    """The bytes of an array, for exact comparison (NaN payloads, -0.0, sub-byte ints)."""
    a = np.asarray(a)
    return a.dtype, a.shape, a.tobytes()


def roundtrip(tmp_path, tree, like=None):
    path = tmp_path / "ckpt"
    save(path, tree)
    return load(path, like=tree if like is None else like)


def test_every_dtype_roundtrips_exactly_with_0d_leaves(tmp_path):
    rng = np.random.default_rng(0)
    tree = {}
    for name in JAX_DTYPES + NUMPY_ONLY_DTYPES:
        values = rng.integers(0, 4, (2, 3)).astype(name)  # small values every format holds
        scalar = np.asarray(1).astype(name)
        if name in NUMPY_ONLY_DTYPES:
            tree[name] = (values, scalar)
        else:
            tree[name] = (jnp.asarray(values), jnp.asarray(scalar))
    assert tree["bfloat16"][0].dtype == jnp.bfloat16
    assert tree["int64"][0].dtype == jnp.int64  # the tests run with x64 enabled
    out = roundtrip(tmp_path, tree)
    for name in tree:
        for a, b in zip(tree[name], out[name], strict=True):
            assert type(a) is type(b), name
            assert raw(a) == raw(b), name


def test_bfloat16_model_params_roundtrip(tmp_path, key):
    """Probe finding 1: bfloat16 params (saved as raw |V2 before) load with their template."""
    model = fn.sequential(
        fn.dense(8, dtype=jnp.bfloat16), fn.relu(), fn.dense(3, dtype=jnp.bfloat16)
    )
    params, _ = model.init(key, (4, 5))
    out = roundtrip(tmp_path, params)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(out), strict=True):
        assert b.dtype == jnp.bfloat16 and raw(a) == raw(b)


def test_typed_prng_keys_roundtrip(tmp_path):
    tree = {
        "one": jax.random.key(3),
        "many": jax.random.split(jax.random.key(1), 4),
        "rbg": jax.random.key(0, impl="rbg"),
        "raw": jax.random.PRNGKey(5),  # a raw key is a uint32 array
    }
    out = roundtrip(tmp_path, tree)
    for name in ("one", "many", "rbg"):
        assert out[name].dtype == tree[name].dtype
        assert out[name].shape == tree[name].shape
        np.testing.assert_array_equal(
            jax.random.key_data(out[name]), jax.random.key_data(tree[name])
        )
    np.testing.assert_array_equal(out["raw"], tree["raw"])
    # The loaded key draws the same numbers.
    np.testing.assert_array_equal(
        jax.random.normal(out["one"], (3,)), jax.random.normal(tree["one"], (3,))
    )
    # A key where the template has another implementation, or a plain array, is refused.
    with pytest.raises(
        ValueError,
        match=r"load: leaf \['one'\] .* PRNG key array of shape \(\) "
        r"and dtype key<fry>, the template has a PRNG key array .* key<rbg>",
    ):
        load(tmp_path / "ckpt", like={**tree, "one": jax.random.key(0, impl="rbg")})
    with pytest.raises(ValueError, match=r"load: leaf \['one'\] .*the template has shape \(2,\)"):
        load(tmp_path / "ckpt", like={**tree, "one": jnp.zeros(2, jnp.uint32)})


def test_shape_dtype_struct_templates(tmp_path, key):
    model = fn.sequential(fn.dense(4), fn.batchnorm(), fn.dense(2))
    opt = fn.optim.adam(1e-3)
    ts = fn.train.init_train_state(model, opt, jax.random.key(0), (3, 5))
    save(tmp_path / "ts", ts)
    template = jax.eval_shape(
        lambda k: fn.train.init_train_state(model, opt, k, (3, 5)), jax.random.key(1)
    )
    assert isinstance(template.params[0]["w"], jax.ShapeDtypeStruct)
    out = load(tmp_path / "ts", like=template)
    assert isinstance(out, fn.train.TrainState)
    assert isinstance(out.params[0]["w"], jax.Array)
    for a, b in zip(jax.tree_util.tree_leaves(ts), jax.tree_util.tree_leaves(out), strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert raw(a) == raw(b)
    # A template with a sharding places the loaded arrays with it.
    device = jax.devices()[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    like = jax.ShapeDtypeStruct((4, 2), jnp.float32, sharding=sharding)
    save(tmp_path / "w", {"w": jnp.ones((4, 2), jnp.float32)})
    assert load(tmp_path / "w", like={"w": like})["w"].sharding == sharding


def test_python_and_numpy_leaves_keep_their_kind_and_width(tmp_path):
    """Probe finding 11: 64-bit scalars came back 32-bit, strings did not load."""
    tree = {
        "int": 2**40 + 1,
        "float": 1 / 3,
        "bool": True,
        "complex": 1 + 2j,
        "np_int": np.int64(2**40 + 1),
        "np_float": np.float64(1 / 3),
        "np_f32": np.float32(0.5),
        "np_array": np.arange(3, dtype=np.int64) + 2**40,
        "str": "héllo\x00",
        "bytes": b"\x00ab\x00",
        "np_str": np.array(["a", "bc"]),
    }
    out = roundtrip(tmp_path, tree)
    for name, value in tree.items():
        assert type(out[name]) is type(value), name
        np.testing.assert_array_equal(out[name], value)
        if hasattr(value, "dtype"):
            assert out[name].dtype == value.dtype, name
    assert out["int"] == 2**40 + 1 and out["str"] == "héllo\x00" and out["bytes"] == b"\x00ab\x00"
    # A Python number template takes any saved number of its kind (e.g. a jax scalar).
    save(tmp_path / "s", {"lr": jnp.float32(0.25), "step": jnp.int32(7)})
    out = load(tmp_path / "s", like={"lr": 0.0, "step": 0})
    assert out == {"lr": 0.25, "step": 7} and type(out["step"]) is int
    with pytest.raises(
        ValueError, match=r"load: leaf \['step'\] .* the template has a Python float"
    ):
        load(tmp_path / "s", like={"lr": 0.0, "step": 0.0})
    with pytest.raises(
        ValueError,
        match=r"leaf \['lr'\] .*has shape \(\) and dtype float32, the "
        r"template has a Python str",
    ):
        load(tmp_path / "s", like={"lr": "x", "step": 0})


def test_load_refuses_mismatched_trees(tmp_path, key):
    params, _ = fn.dense(4).init(key, (3, 5))
    path = tmp_path / "p.ckpt"
    save(path, params)
    other, _ = fn.dense(4).init(key, (3, 6))
    with pytest.raises(ValueError, match=r"load: leaf \['w'\] .* has shape \(5, 4\).*\(6, 4\)"):
        load(path, like=other)
    with pytest.raises(
        ValueError,
        match=r"does not match the template's structure: missing "
        r"leaves \[\], unexpected leaves \[\"\['b'\]\"\]",
    ):
        load(path, like={"w": params["w"]})
    with pytest.raises(
        ValueError,
        match=r"leaf \['b'\] .*dtype float32, the template has shape "
        r"\(4,\) and dtype bfloat16",
    ):
        load(path, like={**params, "b": params["b"].astype(jnp.bfloat16)})


def test_save_refuses_what_needs_pickle_and_touches_nothing(tmp_path):
    path = tmp_path / "ckpt"
    with pytest.raises(
        TypeError,
        match=r"io.save: leaf \['x'\] is a object, which cannot be "
        r"saved without pickle",
    ):
        save(path, {"x": object()})
    with pytest.raises(TypeError, match=r"leaf \[0\] has dtype object"):
        save(path, [np.array([1, "a", None], dtype=object)])
    with pytest.raises(
        TypeError,
        match=r"leaf \['t'\] is a jax.ShapeDtypeStruct, which has no "
        r"values",
    ):
        save(path, {"t": jax.ShapeDtypeStruct((2,), jnp.float32)})
    with pytest.raises(
        TypeError,
        match=r"Python int 1267650600228229401496703205376, which does "
        r"not fit in 64 bits",
    ):
        save(path, {"n": 2**100})
    donated = jax.jit(lambda a: a + 1, donate_argnums=0)
    a = jnp.ones(3)
    donated(a)
    with pytest.raises(ValueError, match=r"leaf \['a'\] is a deleted array \(donated"):
        save(path, {"a": a})
    assert list(tmp_path.iterdir()) == []


# --- damaged and foreign files ------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    tree = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "n": np.int64(3)}
    path = tmp_path / "ckpt"
    save(path, tree)
    return path, tree


def test_a_flipped_byte_anywhere_is_reported(saved):
    path, tree = saved
    data = path.read_bytes()
    assert len(data) > 1000
    outcomes = set()
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 0x01 if i % 2 else 0x80
        path.write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match=INVALID) as err:
            load(path, like=tree)
        outcomes.add(str(err.value).split(INVALID)[1][:40])
    path.write_bytes(data)
    load(path, like=tree)  # the undamaged file loads
    assert any("checksum does not match" in o for o in outcomes)


@pytest.mark.parametrize(
    "cut, why",
    [
        (lambda n: 0, "the file is empty"),
        (lambda n: 10, "it is truncated: only 10 bytes of a zip archive"),
        (
            lambda n: n // 2,
            "it is truncated or damaged: it starts as a funcnn checkpoint but "
            "its end, with funcnn's signature and checksum, is missing",
        ),
        (lambda n: n - 1, "it is truncated or damaged"),
        (lambda n: n - 70, "it is truncated or damaged"),
    ],
    ids=["empty", "10-bytes", "half", "last-byte", "no-trailer"],
)
def test_truncated_files(saved, cut, why):
    path, tree = saved
    data = path.read_bytes()
    path.write_bytes(data[: cut(len(data))])
    with pytest.raises(ValueError, match=INVALID + why):
        load(path, like=tree)


def test_foreign_files(tmp_path):
    like = {"w": np.zeros(3)}
    npz = tmp_path / "plain.npz"
    np.savez(npz, w=np.zeros(3))
    with pytest.raises(
        ValueError,
        match=INVALID + r"it is a zip/npz archive not written by "
        r"funcnn.io.save .*members \['w.npy'\]\), for example a plain numpy.savez",
    ):
        load(npz, like=like)
    npy = tmp_path / "a.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ValueError, match=INVALID + r"it is a single .npy array"):
        load(npy, like=like)
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a checkpoint at all " * 3)
    with pytest.raises(
        ValueError,
        match=INVALID + r"it is not a zip archive \(it starts with "
        r"b'hello, t'\)",
    ):
        load(text, like=like)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing", like=like)


def _sealed(members: dict[str, bytes]) -> bytes:
    """A zip archive with funcnn's signature and a valid checksum around any members."""
    buf = pyio.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.comment = fio._MAGIC + fio._PLACEHOLDER
        for name, data in members.items():
            zf.writestr(name, data)
    data = buf.getvalue()
    digest = hashlib.sha256(data[: -fio._DIGEST] + fio._PLACEHOLDER).hexdigest().encode()
    return data[: -fio._DIGEST] + digest


UNPICKLED: list = []


def _record(what):
    UNPICKLED.append(what)


class _Trap:
    """Unpickling this records that it happened."""

    def __reduce__(self):
        return (_record, ("unpickled",))


def test_loading_never_unpickles(tmp_path):
    buf = pyio.BytesIO()
    np.save(buf, np.array([_Trap()], dtype=object), allow_pickle=True)
    meta = {"format": "funcnn-checkpoint", "version": 1, "leaves": [
        {"path": "['x']", "kind": "numpy", "dtype": "object", "shape": [1]}
    ]}  # fmt: skip
    path = tmp_path / "trap"
    path.write_bytes(_sealed({"funcnn.json": json.dumps(meta), "leaf_0.npy": buf.getvalue()}))
    with pytest.raises(
        ValueError,
        match=INVALID + r"it names a dtype 'object' that funcnn "
        r"checkpoints do not hold",
    ):
        load(path, like={"x": np.zeros(1)})
    meta["leaves"][0]["dtype"] = "float64"
    path.write_bytes(_sealed({"funcnn.json": json.dumps(meta), "leaf_0.npy": buf.getvalue()}))
    with pytest.raises(ValueError, match=INVALID + r"leaf \['x'\] cannot be read .*allow_pickle"):
        load(path, like={"x": np.zeros(1)})
    assert UNPICKLED == []
    pickle.loads(pickle.dumps(_Trap()))
    assert UNPICKLED == ["unpickled"]  # the trap works when something does unpickle


def test_sealed_but_malformed_archives(tmp_path):
    path = tmp_path / "m"
    like = {"x": np.zeros(1)}
    path.write_bytes(_sealed({"other": b"1"}))
    with pytest.raises(ValueError, match=INVALID + "it has no funcnn.json member"):
        load(path, like=like)
    path.write_bytes(_sealed({"funcnn.json": b"{not json"}))
    with pytest.raises(ValueError, match=INVALID + "its funcnn.json is not valid JSON"):
        load(path, like=like)
    path.write_bytes(
        _sealed(
            {
                "funcnn.json": json.dumps(
                    {"format": "funcnn-checkpoint", "version": 99, "leaves": []}
                )
            }
        )
    )
    with pytest.raises(ValueError, match=INVALID + "it has format version 99"):
        load(path, like=like)
    meta = {"format": "funcnn-checkpoint", "version": 1, "leaves": [
        {"path": "['x']", "kind": "numpy", "dtype": "float64", "shape": [1]}
    ]}  # fmt: skip
    path.write_bytes(_sealed({"funcnn.json": json.dumps(meta)}))
    with pytest.raises(ValueError, match=INVALID + r"leaf \['x'\] \(leaf_0.npy\) is missing"):
        load(path, like=like)


# --- the write: temporaries, atomicity, permissions -------------------------------------


def test_a_save_leaves_only_the_file(tmp_path, key):
    params, _ = fn.dense(2).init(key, (3, 4))
    save(tmp_path / "a.ckpt", params)
    save(tmp_path / "a.ckpt", params)
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]


def test_stale_temporaries_are_removed_live_ones_kept(tmp_path):
    """Probe finding 6: a killed save's temporary stayed forever."""
    tree = {"w": np.ones(4)}
    stale = tmp_path / "a.ckpt.0123456789ab.funcnn-tmp"
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / "a.ckpt.ba9876543210.funcnn-tmp"
    live.write_bytes(b"y")
    others = [
        tmp_path / "b.ckpt.0123456789ab.funcnn-tmp",  # another target's
        tmp_path / "a.ckpt.notatoken.funcnn-tmp",  # not a name save makes
        tmp_path / "a.ckpt.tmp",
    ]
    for p in others:
        p.write_bytes(b"z")
    with open(live, "rb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)  # as a save in progress holds it
        save(tmp_path / "a.ckpt", tree)
        assert not stale.exists()
        assert live.exists()
    save(tmp_path / "a.ckpt", tree)  # the writer is gone now: its temporary is stale
    assert not live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a.ckpt", *(p.name for p in others)]
    )


def test_a_failing_save_keeps_the_old_file_and_removes_its_temporary(tmp_path, monkeypatch):
    path = tmp_path / "a.ckpt"
    save(path, {"w": np.zeros(3)})

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", broken)
    with pytest.raises(OSError, match="disk full"):
        save(path, {"w": np.ones(3)})
    monkeypatch.undo()
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        save(path, {"w": np.ones(3)})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]
    np.testing.assert_array_equal(load(path, like={"w": np.zeros(3)})["w"], np.zeros(3))


def test_new_files_follow_the_umask_replaced_files_keep_their_mode(tmp_path):
    """Probe finding 11: checkpoints were written with mode 0600 whatever the umask."""
    tree = {"w": np.ones(2)}
    old = os.umask(0o027)
    try:
        save(tmp_path / "a", tree)
        os.umask(0o002)
        save(tmp_path / "b", tree)
        os.chmod(tmp_path / "a", 0o600)
        save(tmp_path / "a", tree)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "b").st_mode) == 0o664
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o600


def test_read_only_and_existing_targets(tmp_path):
    """Probe finding 11: a read-only checkpoint was replaced silently."""
    path = tmp_path / "frozen.ckpt"
    save(path, {"w": np.zeros(2)})
    os.chmod(path, 0o444)
    with pytest.raises(
        PermissionError,
        match=r"io.save: .*frozen.ckpt is read-only \(mode "
        r"0o444\); funcnn does not replace a read-only checkpoint",
    ):
        save(path, {"w": np.ones(2)})
    np.testing.assert_array_equal(load(path, like={"w": np.ones(2)})["w"], np.zeros(2))
    os.chmod(path, 0o644)
    with pytest.raises(FileExistsError, match="exists and overwrite=False"):
        save(path, {"w": np.ones(2)}, overwrite=False)
    save(tmp_path / "new", {"w": np.ones(2)}, overwrite=False)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        save(tmp_path, {"w": np.ones(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frozen.ckpt", "new"]


def test_the_file_is_an_ordinary_zip_of_npy_arrays(saved):
    path, tree = saved
    with np.load(path) as data:  # numpy can read it (no pickle needed)
        assert data.files == ["funcnn.json", "leaf_0", "leaf_1"]
        np.testing.assert_array_equal(data["leaf_1"], tree["w"])  # leaves in key order: n, w
    bf16 = path.parent / "bf16"
    save(bf16, {"w": np.ones(2, ml_dtypes.bfloat16)})
    with np.load(bf16) as data:
        assert data["leaf_0"].dtype == np.uint16  # the raw bits; load views them back
