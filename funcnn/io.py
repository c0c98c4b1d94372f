"""Save and load pytrees (params, state, optimizer state, a ``TrainState``) to one file.

A checkpoint is a zip archive of ``.npy`` arrays (``numpy.load`` can open it), with a
JSON description of every leaf and a SHA-256 checksum of the whole file in the archive
comment. What :func:`save` and :func:`load` guarantee:

* **Atomic.** The file is written beside its destination under a temporary name,
  flushed to disk (``fsync``), renamed over the destination (``os.replace``) and the
  directory is synced. A crash or a kill at any moment leaves the previous file at the
  path intact; two processes saving to one path leave one complete file, the last one
  renamed. A temporary left by a killed save is removed by the next save to that path.
* **Verified.** ``load`` checks the checksum before it reads anything else, so a file
  changed anywhere (one flipped byte, a truncated copy) is reported as corrupt; an
  empty, foreign (``numpy.savez``) or non-zip file gives ``ValueError: ... is not a
  valid funcnn checkpoint: <why>``. Loading never unpickles.
* **Checked against a template.** ``load(path, like)`` needs a tree of the same
  structure (fresh params, or ``jax.eval_shape`` of the init) and refuses a file whose
  leaf paths, shapes or dtypes differ, naming the first difference.
* **Every dtype.** bfloat16, the float8/float6/float4 formats, int4/int2, bool, complex,
  0-d leaves, typed PRNG keys (``jax.random.key``), NumPy and Python scalars (64-bit
  values stay 64-bit) and strings round-trip.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16, float8_*, int4, ... with NumPy)
import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: no locks, so stale temporaries are left alone
    fcntl = None

_FORMAT = "funcnn-checkpoint"
_VERSION = 1
_MAGIC = b"funcnn-checkpoint 1 sha256:"
_DIGEST = 64  # hex characters of a SHA-256
_PLACEHOLDER = b"0" * _DIGEST
_META = "funcnn.json"
_TMP = ".funcnn-tmp"
_TOKEN = 12  # hex characters of a temporary's random part
_CHUNK = 1 << 22

__all__ = ["load", "save"]


# --- encoding leaves ------------------------------------------------------------------


def _flatten(tree):
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(path) for path, _ in flat], [leaf for _, leaf in flat], treedef


def _is_key_dtype(dtype) -> bool:
    return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _is_extended_float_or_int(dtype: np.dtype) -> bool:
    """bfloat16, float8_*, int4, ...: NumPy user dtypes that ``.npy`` cannot describe."""
    return dtype.isbuiltin == 2 and dtype.names is None


def _storable(where: str, arr: np.ndarray) -> tuple[np.ndarray, str]:
    """The array as written to the archive and the name of its dtype."""
    dtype = arr.dtype
    if _is_extended_float_or_int(dtype):
        # Stored as unsigned integers of the same width, viewed back on load.
        return arr.view(np.dtype(f"u{dtype.itemsize}")), dtype.name
    if dtype.kind in "biufcUSMm":
        return arr, dtype.str if dtype.kind in "USMm" else dtype.name
    raise TypeError(
        f"io.save: leaf {where} has dtype {dtype}, which cannot be saved without pickle; "
        f"save arrays of numbers, booleans or strings"
    )


def _encode(where: str, leaf) -> tuple[dict, np.ndarray]:
    """One leaf as ``(description, array)``; raises ``TypeError`` for what cannot be saved."""
    if isinstance(leaf, bool):
        return {"kind": "bool"}, np.asarray(leaf)
    if isinstance(leaf, int) and not isinstance(leaf, np.generic):
        try:
            return {"kind": "int"}, np.asarray(leaf, dtype=np.int64)
        except OverflowError:
            raise TypeError(
                f"io.save: leaf {where} is the Python int {leaf}, which does not fit in 64 bits"
            ) from None
    if isinstance(leaf, float):
        return {"kind": "float"}, np.asarray(leaf, dtype=np.float64)
    if isinstance(leaf, complex):
        return {"kind": "complex"}, np.asarray(leaf, dtype=np.complex128)
    if isinstance(leaf, str):
        return {"kind": "str"}, np.frombuffer(leaf.encode("utf-8"), np.uint8)
    if isinstance(leaf, bytes):
        return {"kind": "bytes"}, np.frombuffer(leaf, np.uint8)
    if isinstance(leaf, jax.ShapeDtypeStruct):
        raise TypeError(
            f"io.save: leaf {where} is a jax.ShapeDtypeStruct, which has no values to save "
            f"(it can be a template for load)"
        )
    if isinstance(leaf, jax.Array):
        if leaf.is_deleted():
            raise ValueError(
                f"io.save: leaf {where} is a deleted array (donated to a jitted step?); "
                f"save the values the step returned"
            )
        if _is_key_dtype(leaf.dtype):
            data = np.asarray(jax.random.key_data(leaf))
            impl = str(jax.random.key_impl(leaf))
            return {"kind": "key", "key_dtype": str(leaf.dtype), "impl": impl}, data
        return {"kind": "jax"}, np.asarray(leaf)
    if isinstance(leaf, np.generic):
        return {"kind": "numpy_scalar"}, np.asarray(leaf)
    if isinstance(leaf, np.ndarray):
        return {"kind": "numpy"}, leaf
    arr = np.asarray(leaf)
    if arr.dtype.kind == "O":
        raise TypeError(
            f"io.save: leaf {where} is a {type(leaf).__name__}, which cannot be saved without "
            f"pickle; save arrays, numbers or strings"
        )
    return {"kind": "numpy"}, arr


def _encode_tree(tree) -> tuple[list[dict], list[np.ndarray]]:
    paths, leaves, _ = _flatten(tree)
    entries, arrays = [], []
    for where, leaf in zip(paths, leaves, strict=True):
        entry, arr = _encode(where, leaf)
        stored, dtype = _storable(where, arr)
        entry.update(path=where, dtype=dtype, shape=list(arr.shape))
        entries.append(entry)
        arrays.append(stored)
    return entries, arrays


# --- writing --------------------------------------------------------------------------


class _HashingWriter:
    """A write-only, unseekable stream that hashes what it passes on.

    ``zipfile`` writes an unseekable stream strictly in order (sizes go in data
    descriptors after each member), so the hash covers the file as it is on disk.
    """

    def __init__(self, f):
        self._f, self._pos, self.hash = f, 0, hashlib.sha256()

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        self._f.write(data)
        self.hash.update(data)
        self._pos += n
        return n

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        self._f.flush()


def _write(f, entries: list[dict], arrays: list[np.ndarray]) -> None:
    """Write the archive to the binary file ``f`` (positioned at 0) and seal it."""
    writer = _HashingWriter(f)
    meta = {"format": _FORMAT, "version": _VERSION, "leaves": entries}
    with zipfile.ZipFile(writer, mode="w", compression=zipfile.ZIP_STORED) as zf:
        zf.comment = _MAGIC + _PLACEHOLDER
        zf.writestr(_META, json.dumps(meta, indent=1))
        for i, arr in enumerate(arrays):
            with zf.open(f"leaf_{i}.npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)
    # The checksum is that of the file with the placeholder in place of the digest.
    f.flush()
    f.seek(writer.tell() - _DIGEST)
    f.write(writer.hash.hexdigest().encode("ascii"))
    f.flush()


def _is_own_temporary(name: str, base: str) -> bool:
    prefix = base + "."
    if not (name.startswith(prefix) and name.endswith(_TMP)):
        return False
    token = name[len(prefix) : -len(_TMP)]
    return len(token) == _TOKEN and all(c in "0123456789abcdef" for c in token)


def _remove_stale_temporaries(directory: str, base: str) -> None:
    """Remove temporaries of earlier saves to ``base`` whose writer is gone.

    A writer holds an exclusive ``flock`` on its temporary until the rename; the kernel
    drops it when the process dies. A temporary that can be locked is therefore stale.
    """
    if fcntl is None:
        return
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not _is_own_temporary(name, base):
            continue
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.samestat(os.stat(path), os.fstat(fd)):
                os.remove(path)
        except OSError:
            pass  # locked by a live writer, or already gone
        finally:
            os.close(fd)


def _create_temporary(directory: str, base: str) -> tuple[int, str]:
    """A new, locked temporary file beside the target, created with mode 0o666 & ~umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    while True:
        path = os.path.join(directory, f"{base}.{secrets.token_hex(_TOKEN // 2)}{_TMP}")
        try:
            fd = os.open(path, flags, 0o666)
        except FileExistsError:
            continue
        if fcntl is None:
            return fd, path
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            ours = os.path.samestat(os.stat(path), os.fstat(fd))
        except FileNotFoundError:
            ours = False
        if ours:
            return fd, path
        os.close(fd)  # a concurrent cleanup took it for stale between open and flock


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # e.g. Windows: directories cannot be opened
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(path: str | os.PathLike, tree, *, overwrite: bool = True) -> None:
    """Write every leaf of ``tree`` to the checkpoint file ``path``, atomically.

    Leaves may be JAX arrays of any dtype (typed PRNG keys included), NumPy arrays and
    scalars, Python ``bool``/``int``/``float``/``complex`` and ``str``/``bytes``. Anything
    that would need pickle is refused with a ``TypeError`` before the file is touched.

    The file is written beside ``path`` as ``<name>.<random>.funcnn-tmp``, synced, and
    renamed over ``path``; see the module docstring for the guarantees. A new file gets
    the permissions ``0o666`` less the umask, like any file the user creates; replacing
    a file keeps that file's permissions. A **read-only** file at ``path`` (no write
    permission bit, or not writable by this user) is not replaced: ``PermissionError``,
    as ``open(path, "w")`` would raise. ``overwrite=False`` refuses any existing file
    (``FileExistsError``). A symbolic link at ``path`` is replaced by the file; the file
    it pointed to is left alone.

    >>> import jax.numpy as jnp, tempfile, os
    >>> from funcnn.io import save, load
    >>> params = {"w": jnp.ones((2, 3), jnp.bfloat16), "b": jnp.zeros(3)}
    >>> f = os.path.join(tempfile.mkdtemp(), "params.ckpt")
    >>> save(f, params)
    >>> load(f, like=params)["w"].dtype
    dtype(bfloat16)
    """
    entries, arrays = _encode_tree(tree)
    shown = os.fspath(path)
    target = os.path.abspath(shown)
    directory, base = os.path.split(target)
    mode = None
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        st = None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"io.save: {shown} is a directory")
        if not overwrite:
            raise FileExistsError(f"io.save: {shown} exists and overwrite=False")
        if stat.S_ISREG(st.st_mode):
            mode = stat.S_IMODE(st.st_mode)
            if not mode & 0o222 or not os.access(target, os.W_OK):
                raise PermissionError(
                    f"io.save: {shown} is read-only (mode {mode:#o}); funcnn does not replace "
                    f"a read-only checkpoint. Make it writable (chmod u+w) or save elsewhere."
                )
    _remove_stale_temporaries(directory, base)
    fd, tmp = _create_temporary(directory, base)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(fd, mode)
            _write(f, entries, arrays)
            os.fsync(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        os.close(fd)
        raise
    os.close(fd)  # releases the lock, after the temporary's name is gone
    _fsync_directory(directory)


# --- reading --------------------------------------------------------------------------


class _Invalid(Exception):
    """Why a file is not a valid checkpoint (turned into one ValueError by ``load``)."""


def _describe_foreign(f, size: int) -> str:
    f.seek(0)
    head = f.read(64)
    if head.startswith(b"\x93NUMPY"):
        return "it is a single .npy array (numpy.save), not a funcnn checkpoint"
    if not head.startswith(b"PK\x03\x04"):
        return f"it is not a zip archive (it starts with {head[:8]!r})"
    if size < 30 + len(_META):
        return f"it is truncated: only {size} bytes of a zip archive"
    if head[30 : 30 + len(_META)] == _META.encode():
        return (
            "it is truncated or damaged: it starts as a funcnn checkpoint but its end, "
            "with funcnn's signature and checksum, is missing"
        )
    try:
        f.seek(0)
        with zipfile.ZipFile(f) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return "it is a damaged or truncated zip archive without funcnn's signature"
    return (
        f"it is a zip/npz archive not written by funcnn.io.save (no funcnn signature; "
        f"members {names[:4]}), for example a plain numpy.savez file"
    )


def _verify(f, size: int) -> None:
    """Check the signature and the checksum of the whole file."""
    if size == 0:
        raise _Invalid("the file is empty")
    tail_len = len(_MAGIC) + _DIGEST
    tail = b""
    if size >= tail_len:
        f.seek(size - tail_len)
        tail = f.read(tail_len)
    if not tail.startswith(_MAGIC):
        raise _Invalid(_describe_foreign(f, size))
    stored = tail[len(_MAGIC) :]
    digest = hashlib.sha256()
    f.seek(0)
    remaining = size - _DIGEST
    while remaining > 0:
        chunk = f.read(min(_CHUNK, remaining))
        if not chunk:
            raise _Invalid("the file changed size while it was read")
        digest.update(chunk)
        remaining -= len(chunk)
    digest.update(_PLACEHOLDER)
    if digest.hexdigest().encode("ascii") != stored:
        raise _Invalid(
            "its SHA-256 checksum does not match its content: the file is corrupt "
            "(changed, damaged or truncated after it was written)"
        )


def _read_meta(zf: zipfile.ZipFile) -> list[dict]:
    try:
        meta = json.loads(zf.read(_META))
    except KeyError:
        raise _Invalid(f"it has no {_META} member") from None
    except ValueError as err:
        raise _Invalid(f"its {_META} is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise _Invalid(f"its {_META} does not describe a funcnn checkpoint")
    if meta.get("version") != _VERSION:
        raise _Invalid(
            f"it has format version {meta.get('version')!r}; this funcnn reads version "
            f"{_VERSION} (a newer funcnn wrote it?)"
        )
    leaves = meta.get("leaves")
    if not isinstance(leaves, list) or not all(
        isinstance(e, dict) and {"path", "kind", "dtype", "shape"} <= set(e) for e in leaves
    ):
        raise _Invalid(f"its {_META} has no valid list of leaves")
    return leaves


def _dtype(name: str) -> np.dtype:
    try:
        dtype = np.dtype(name)
    except TypeError:
        raise _Invalid(f"it names an unknown dtype {name!r}") from None
    if not (_is_extended_float_or_int(dtype) or dtype.kind in "biufcUSMm"):
        raise _Invalid(f"it names a dtype {name!r} that funcnn checkpoints do not hold")
    return dtype


def _read_array(zf: zipfile.ZipFile, i: int, entry: dict) -> np.ndarray:
    try:
        with zf.open(f"leaf_{i}.npy") as member:
            arr = np.lib.format.read_array(member, allow_pickle=False)
    except KeyError:
        raise _Invalid(f"leaf {entry['path']} (leaf_{i}.npy) is missing") from None
    except ValueError as err:  # includes what would need pickle
        raise _Invalid(f"leaf {entry['path']} cannot be read ({err})") from None
    dtype = _dtype(entry["dtype"])
    if _is_extended_float_or_int(dtype):
        if arr.dtype != np.dtype(f"u{dtype.itemsize}"):
            raise _Invalid(f"leaf {entry['path']} is stored with dtype {arr.dtype}")
        arr = arr.view(dtype)
    if entry["kind"] not in ("str", "bytes", "key") and (
        arr.dtype != dtype or list(arr.shape) != list(entry["shape"])
    ):
        raise _Invalid(f"leaf {entry['path']} does not match its description")
    return arr


_SCALAR_KINDS = {bool: "b", int: "iu", float: "f", complex: "c"}


def _saved_desc(entry: dict) -> str:
    if entry["kind"] in ("str", "bytes"):
        return f"a Python {entry['kind']}"
    if entry["kind"] == "key":
        return (
            f"a PRNG key array of shape {tuple(entry['shape'][:-1])} and dtype "
            + entry["key_dtype"]
        )
    return f"shape {tuple(entry['shape'])} and dtype {_dtype(entry['dtype'])}"


def _mismatch(path, where: str, entry: dict, ref_desc: str) -> ValueError:
    return ValueError(
        f"load: leaf {where} in {path} has {_saved_desc(entry)}, the template has {ref_desc}"
    )


def _template_desc(ref) -> str:
    if isinstance(ref, (str, bytes)):
        return f"a Python {type(ref).__name__}"
    dtype = getattr(ref, "dtype", None)
    if dtype is not None and _is_key_dtype(dtype):
        return f"a PRNG key array of shape {tuple(ref.shape)} and dtype {dtype}"
    return (
        f"shape {np.shape(ref)} and dtype {dtype if dtype is not None else np.asarray(ref).dtype}"
    )


def _check_leaf(path, where: str, entry: dict, ref) -> None:
    """Raise ``ValueError`` if the saved leaf cannot stand for the template leaf ``ref``."""
    kind = entry["kind"]
    if isinstance(ref, (str, bytes)):
        if kind != type(ref).__name__:
            raise _mismatch(path, where, entry, _template_desc(ref))
        return
    if kind in ("str", "bytes"):
        raise _mismatch(path, where, entry, _template_desc(ref))
    dtype = getattr(ref, "dtype", None)
    if dtype is not None and _is_key_dtype(dtype):
        if (
            kind != "key"
            or entry["key_dtype"] != str(dtype)
            or (tuple(entry["shape"][:-1]) != tuple(ref.shape))
        ):
            raise _mismatch(path, where, entry, _template_desc(ref))
        return
    if kind == "key":
        raise _mismatch(path, where, entry, _template_desc(ref))
    shape, saved = tuple(entry["shape"]), _dtype(entry["dtype"])
    for py_type, kinds in _SCALAR_KINDS.items():
        if type(ref) is py_type or (isinstance(ref, py_type) and not isinstance(ref, np.generic)):
            # A Python number: any saved 0-d number of the same kind.
            if shape != () or saved.kind not in kinds:
                raise _mismatch(path, where, entry, f"a Python {py_type.__name__}")
            return
    ref_dtype = np.dtype(dtype) if dtype is not None else np.asarray(ref).dtype
    if shape != tuple(np.shape(ref)) or saved != ref_dtype:
        raise _mismatch(path, where, entry, _template_desc(ref))


def _decode(entry: dict, arr: np.ndarray, ref):
    """The loaded leaf, in the template's kind (JAX array, NumPy array or scalar, Python)."""
    if isinstance(ref, str):
        return arr.tobytes().decode("utf-8")
    if isinstance(ref, bytes):
        return arr.tobytes()
    if isinstance(ref, bool):
        return bool(arr.item())
    for py_type in (int, float, complex):
        if isinstance(ref, py_type) and not isinstance(ref, np.generic):
            return py_type(arr.item())
    if isinstance(ref, np.generic):
        return arr[()]
    if isinstance(ref, np.ndarray):
        return arr
    if entry["kind"] == "key":
        out = jax.random.wrap_key_data(jnp.asarray(arr), impl=entry["impl"])
    else:
        out = jnp.asarray(arr)
    sharding = getattr(ref, "sharding", None)
    if sharding is not None and isinstance(ref, (jax.Array, jax.ShapeDtypeStruct)):
        # A deleted (donated) template array may have lost its sharding: keep the default.
        with contextlib.suppress(RuntimeError, ValueError):
            out = jax.device_put(out, sharding)
    return out


def load(path: str | os.PathLike, like):
    """Read a tree saved by :func:`save`, checked against the template ``like``.

    ``like`` has the structure of the saved tree: freshly initialized params, a
    ``TrainState``, or ``jax.eval_shape`` of the function that makes them (a tree of
    ``jax.ShapeDtypeStruct``, which allocates nothing). Each loaded leaf takes the
    template leaf's kind: a JAX array for a JAX array or ``ShapeDtypeStruct`` (placed with
    its sharding, when it has one), a NumPy array or scalar for NumPy ones, a Python
    number or string for Python ones.

    Raises:
      ValueError: ``"... is not a valid funcnn checkpoint: <why>"`` for an empty,
        truncated, damaged (checksum), foreign or non-zip file; and, for a valid file,
        when its leaf paths, shapes or dtypes differ from ``like`` (naming the first
        difference).
      FileNotFoundError: no file at ``path``.
    """
    paths, leaves, treedef = _flatten(like)
    with open(path, "rb") as f:
        try:
            _verify(f, os.fstat(f.fileno()).st_size)
            f.seek(0)
            with zipfile.ZipFile(f) as zf:
                entries = _read_meta(zf)
                saved_paths = [e["path"] for e in entries]
                if saved_paths != paths:
                    missing = [p for p in paths if p not in saved_paths]
                    extra = [p for p in saved_paths if p not in paths]
                    raise ValueError(
                        f"load: {path} does not match the template's structure: "
                        f"missing leaves {missing[:5]}, unexpected leaves {extra[:5]}"
                        + ("" if missing or extra else " (same leaves in another order)")
                    )
                for where, entry, ref in zip(paths, entries, leaves, strict=True):
                    _check_leaf(path, where, entry, ref)
                out = [
                    _decode(entry, _read_array(zf, i, entry), ref)
                    for i, (entry, ref) in enumerate(zip(entries, leaves, strict=True))
                ]
        except _Invalid as why:
            raise ValueError(f"load: {path} is not a valid funcnn checkpoint: {why}") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, KeyError) as err:
            raise ValueError(
                f"load: {path} is not a valid funcnn checkpoint: its archive cannot be read "
                f"({type(err).__name__}: {err})"
            ) from None
    return treedef.unflatten(out)
