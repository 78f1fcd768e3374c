"""An optimized BLAS under MLX's CPU back end on Linux (OpenBLAS from the `cpu` extra).

MLX's Linux CPU wheel links the netlib reference BLAS, 20-40x slower at a float32 matrix product than
OpenBLAS on the same cores, and every Linear and convolution on the CPU goes through its `cblas_sgemm`.
The `cpu` extra installs scipy-openblas32 (OpenBLAS built for Python packages, 32-bit integers like
CBLAS, one kernel per CPU family chosen at run time). Its symbols all carry a `scipy_` prefix, so the
dynamic linker can never bind MLX's `cblas_sgemm` to it: loading it first with RTLD_GLOBAL, or with
LD_PRELOAD, changes nothing. Instead we point libmlx's own import slots for the three products it
imports (its GOT entries for cblas_sgemm / dgemm / cgemm) at OpenBLAS's functions of the same C
signature; that is what binding to an unprefixed OpenBLAS would have done.

Safety: only an ELF64 libmlx that imports these names is touched, only when nothing in the process's
global scope already provides `cblas_sgemm` (a BLAS the user preloaded wins), and a product checked
against numpy confirms the switch; otherwise the slots are put back. Any failure leaves MLX as it was,
silently. `OLLAMA_IMG_CPU_BLAS=bundled` keeps MLX's own BLAS.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("ollama_img")

ENV = "OLLAMA_IMG_CPU_BLAS"
# MLX's import -> the scipy-openblas32 export with the same C signature.
FUNCTIONS = {
    "cblas_sgemm": "scipy_cblas_sgemm",
    "cblas_dgemm": "scipy_cblas_dgemm",
    "cblas_cgemm": "scipy_cblas_cgemm",
}
# Relocation types that fill a GOT slot with a symbol's address: (JUMP_SLOT, GLOB_DAT) per machine.
_SLOT_RELOCATIONS = {62: (7, 6), 183: (1026, 1025)}  # EM_X86_64, EM_AARCH64
_SHT_RELA, _SHT_DYNSYM = 4, 11
_PROT_READ, _PROT_WRITE = 1, 2

_lock = threading.Lock()
_state: dict[str, object] = {}  # "result": what install() found, once; "library": the CDLL kept alive


@dataclass(frozen=True)
class Slot:
    """One GOT entry of libmlx: where it is in memory and which function it imports."""

    symbol: str
    address: int


def install() -> str | None:
    """Make MLX's CPU matrix products run on OpenBLAS if this machine can; a description, or None.

    Call after `import mlx.core`. Safe to call often (it works once) and from any thread.
    """
    with _lock:
        if "result" not in _state:
            try:
                _state["result"] = _install()
            except Exception as exc:  # noqa: BLE001 - a faster BLAS is a bonus, never an error
                log.debug("keeping MLX's bundled BLAS: %s", exc)
                _state["result"] = None
        return _state["result"]


def _install() -> str | None:
    if sys.platform != "linux" or os.environ.get(ENV, "").strip().lower() in ("bundled", "0", "off"):
        return None
    if hasattr(ctypes.CDLL(None), "cblas_sgemm"):
        return None  # something in the global scope (LD_PRELOAD, RTLD_GLOBAL) already serves MLX
    library = _openblas()
    if library is None:
        return None
    mlx_path, base = _loaded_libmlx()
    slots = got_slots(mlx_path, base, FUNCTIONS)
    if "cblas_sgemm" not in {s.symbol for s in slots}:
        return None
    targets = {
        s.symbol: ctypes.cast(getattr(library, FUNCTIONS[s.symbol]), ctypes.c_void_p).value for s in slots
    }
    previous = {}
    try:
        for slot in slots:
            previous[slot] = _write_pointer(slot.address, targets[slot.symbol])
        matched = _products_match()
    except BaseException:
        matched = False
        raise
    finally:
        if not matched:
            for slot, value in previous.items():
                _write_pointer(slot.address, value)
    if not matched:
        log.debug("OpenBLAS products did not match numpy's; keeping MLX's bundled BLAS")
        return None
    _state["library"] = library
    config = library.scipy_openblas_get_config
    config.restype = ctypes.c_char_p
    return f"OpenBLAS ({config().decode(errors='replace').strip()})"


def serving_library(symbol: str = "cblas_sgemm") -> Path | None:
    """The library file whose code libmlx's `symbol` slot points into now (libmlx.so itself while a
    lazily bound slot has not been called yet), or None off Linux or when libmlx does not import it."""
    if sys.platform != "linux":
        return None
    slots = got_slots(*_loaded_libmlx(), [symbol])
    if not slots:
        return None
    address = ctypes.c_void_p.from_address(slots[0].address).value
    info = _DlInfo()
    if not address or not ctypes.CDLL(None).dladdr(ctypes.c_void_p(address), ctypes.byref(info)):
        return None
    return Path(info.dli_fname.decode(errors="replace"))


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def _openblas() -> ctypes.CDLL | None:
    """scipy-openblas32's library, loaded without running its package (which imports importlib.metadata)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("scipy_openblas32")
    except (ImportError, ValueError):  # hidden or broken: as good as missing
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    lib_dir = Path(next(iter(spec.submodule_search_locations))) / "lib"
    candidates = sorted(lib_dir.glob("libscipy_openblas*.so*"))
    return ctypes.CDLL(str(candidates[0])) if candidates else None


class _DlPhdrInfo(ctypes.Structure):
    _fields_ = [("dlpi_addr", ctypes.c_void_p), ("dlpi_name", ctypes.c_char_p)]


def _loaded_libmlx() -> tuple[Path, int]:
    """The path and load address of the libmlx.so this process has mapped (import mlx.core first)."""
    found: list[tuple[Path, int]] = []
    callback_type = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.POINTER(_DlPhdrInfo), ctypes.c_size_t, ctypes.c_void_p
    )

    def visit(info, _size, _data):
        name = (info.contents.dlpi_name or b"").decode(errors="replace")
        if Path(name).name == "libmlx.so":
            found.append((Path(name), info.contents.dlpi_addr or 0))
            return 1
        return 0

    libc = ctypes.CDLL(None)
    libc.dl_iterate_phdr(callback_type(visit), None)
    if not found:
        raise RuntimeError("libmlx.so is not loaded")
    return found[0]


def got_slots(path: Path, base: int, symbols) -> list[Slot]:
    """The GOT entries through which the ELF shared library at `path` (loaded at `base`) calls `symbols`.

    Read from the file's section headers: the .rela.plt/.rela.dyn relocations that fill a slot with the
    address of an undefined (imported) dynamic symbol.
    """
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise RuntimeError(f"{path} is not a little-endian ELF64 file")
    machine = struct.unpack_from("<H", data, 18)[0]
    if machine not in _SLOT_RELOCATIONS:
        raise RuntimeError(f"{path}: unsupported machine {machine}")
    slot_types = _SLOT_RELOCATIONS[machine]
    (shoff,) = struct.unpack_from("<Q", data, 40)
    shentsize, shnum = struct.unpack_from("<HH", data, 58)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    # (name, type, flags, addr, offset, size, link, info, addralign, entsize)
    dynsym = next((s for s in sections if s[1] == _SHT_DYNSYM), None)
    if dynsym is None:
        raise RuntimeError(f"{path} has no dynamic symbols")
    strtab = sections[dynsym[6]]

    def symbol(index: int) -> tuple[str, int]:
        name_off, _info, _other, shndx = struct.unpack_from("<IBBH", data, dynsym[4] + index * 24)
        start = strtab[4] + name_off
        return data[start : data.index(b"\0", start)].decode(errors="replace"), shndx

    wanted = set(symbols)
    slots = []
    for section in sections:
        if section[1] != _SHT_RELA or section[6] != sections.index(dynsym):
            continue
        for offset in range(section[4], section[4] + section[5], 24):
            r_offset, r_info = struct.unpack_from("<QQ", data, offset)
            if (r_info & 0xFFFFFFFF) not in slot_types:
                continue
            name, shndx = symbol(r_info >> 32)
            if name in wanted and shndx == 0:
                slots.append(Slot(name, base + r_offset))
    return slots


def _write_pointer(address: int, value: int) -> int:
    """Store `value` at `address` (making its page writable for the moment if it is not); the old value."""
    page_size = os.sysconf("SC_PAGE_SIZE")
    page = address & ~(page_size - 1)
    writable = _page_writable(address)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if not writable and libc.mprotect(page, page_size, _PROT_READ | _PROT_WRITE) != 0:
        raise OSError(ctypes.get_errno(), "mprotect failed")
    cell = ctypes.c_void_p.from_address(address)
    old = cell.value or 0
    cell.value = value
    if not writable:
        libc.mprotect(page, page_size, _PROT_READ)
    return old


def _page_writable(address: int) -> bool:
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, perms = line.split()[:2]
            start, end = (int(x, 16) for x in span.split("-"))
            if start <= address < end:
                return "w" in perms
    raise RuntimeError(f"address {address:#x} is not mapped")


def _products_match() -> bool:
    """A float32 product on MLX's CPU stream (plain and transposed) equals numpy's float64 one."""
    import mlx.core as mx
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((37, 53)).astype(np.float32)
    b = rng.standard_normal((53, 29)).astype(np.float32)
    with mx.stream(mx.cpu):
        plain = np.array(mx.matmul(mx.array(a), mx.array(b)))
        transposed = np.array(mx.matmul(mx.array(b).T, mx.array(a).T))  # both operands transposed views
    expected = a.astype(np.float64) @ b.astype(np.float64)
    return bool(
        np.allclose(plain, expected, rtol=1e-4, atol=1e-4)
        and np.allclose(transposed, expected.T, rtol=1e-4, atol=1e-4)
    )
