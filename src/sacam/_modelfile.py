"""Checks that a model file can be loaded without running code from it.

A ``.pt2`` archive (``torch.export.save``) is data plus a graph of torch operators, but
``torch.export.load`` will also, depending on the archive's own contents:

- unpickle weights or constants the configs mark ``use_pickle`` (``weights_only=False``),
  "opaque" and TorchBind constants, legacy ``.pt`` payloads, and sample inputs that fail
  a ``weights_only=True`` load (it retries with ``weights_only=False``);
- ``sympy.sympify`` (an ``eval``) the graph's symbolic-shape expressions;
- resolve each node's target as any attribute path under ``torch``, ``operator`` or
  ``math`` (``torch.serialization.os.system`` resolves), called when the model runs;
- turn the program's ``guards_code`` strings into Python functions.

:func:`check_pt2` allows only what ``torch.export.save`` writes for a plain model: raw
tensor payloads, a graph whose nodes call registered operators (``torch.ops.*``), plain
``operator``/``math`` arithmetic, and shape expressions made of symbols, numbers and
sympy's arithmetic functions. Anything else is refused before torch reads the file.

A TorchScript file is a program: its ``code/`` is run by the TorchScript interpreter,
``__setstate__`` methods run while it loads, and ``torch.jit.load`` documents that
malicious pickle data in it can execute arbitrary code. It is never "safe" to load.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import ModelError

TRUST_HINT = (
    "load it only if you trust its source: pass trust_model_file=True "
    "(command line: --trust-model-file)"
)

# Arithmetic the exporter itself emits for symbolic shapes (operator.*, torch.sym_*).
_OPERATOR_NAMES = frozenset(
    "getitem add sub mul truediv floordiv mod pow neg pos abs eq ne lt le gt ge "
    "and_ or_ xor not_ invert lshift rshift matmul".split()
)
# Names allowed in symbolic-shape expressions (written by sympy's srepr): torch's sympy
# functions and sympy's arithmetic classes; symbols themselves look like s0, u12, zuf3.
_SYMPY_NAMES = frozenset(
    "Symbol Dummy Add Mul Pow Integer Rational Float Half One Zero NegativeOne Infinity "
    "NegativeInfinity BooleanTrue BooleanFalse true false "
    "FloorDiv ModularIndexing Where PythonMod Mod CleanDiv CeilToInt FloorToInt CeilDiv "
    "LShift RShift PowByNatural FloatPow FloatTrueDiv IntTrueDiv "
    "IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt RoundDecimal "
    "ToFloat Identity OpaqueUnaryFn_sqrt BitwiseFn_bitwise_and BitwiseFn_bitwise_or "
    "BitwiseFn_bitwise_xor Max Min Abs Eq Ne Lt Le Gt Ge StrictLessThan StrictGreaterThan "
    "LessThan GreaterThan And Or Not Piecewise Integer Rational Float floor ceiling sqrt "
    "True False oo zoo nan".split()
)
_SYMBOL = re.compile(r"[a-z]+\d+")
_IDENT = re.compile(r"(?<![\w.])[A-Za-z_]\w*")
_EXPR_CHARS = re.compile(r"[A-Za-z0-9_ +\-*/%(),.<>=!&|~^]*")
_STRING = re.compile(r"'[A-Za-z0-9_.+\-]*'")  # Symbol('s0'), Float('0.5', precision=53)
_KEYWORD = re.compile(r"\b[A-Za-z_]\w*\s*=(?!=)")  # positive=True: a name, not evaluated
_BAD_DOT = re.compile(r"(?<!\d)\.|\.(?!\d)")
_TOP_FILES = frozenset(
    {
        "archive_format",
        "archive_version",
        "byteorder",
        ".data/version",
        ".data/serialization_id",
        "data/weights/model_weights_config.json",
        "data/constants/model_constants_config.json",
    }
)
_PAYLOAD = {
    "data/weights/": re.compile(r"weight_\d+"),
    "data/constants/": re.compile(r"tensor_\d+"),
}


def _refuse(path: Path, why: str) -> ModelError:
    return ModelError(f"refusing to load {path}: {why}; {TRUST_HINT}")


def _walk(obj: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k, v
            yield from _walk(v, k)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v, key)


def _target_ok(target: str) -> bool:
    parts = target.split(".")
    if parts[0] == "torch":
        if len(parts) >= 3 and parts[1] == "ops":
            return all(p.isidentifier() and not p.startswith("__") for p in parts[2:])
        return len(parts) == 2 and parts[1].startswith(("sym_", "_sym_"))
    if parts[0] == "_operator":
        return len(parts) == 2 and parts[1] in _OPERATOR_NAMES
    if parts[0] == "math":
        return len(parts) == 2 and callable(getattr(math, parts[1], None))
    return False


def _expr_ok(expr: str) -> bool:
    expr = _KEYWORD.sub("", _STRING.sub("0", expr))
    if not _EXPR_CHARS.fullmatch(expr) or "__" in expr or _BAD_DOT.search(expr):
        return False
    return all(name in _SYMPY_NAMES or _SYMBOL.fullmatch(name) for name in _IDENT.findall(expr))


def _check_payload_config(path: Path, zf: zipfile.ZipFile, name: str, prefix: str) -> None:
    try:
        config = json.loads(zf.read(name)).get("config", {})
    except (KeyError, ValueError, AttributeError) as exc:
        raise _refuse(path, f"its {name.rsplit('/', 1)[-1]} cannot be read ({exc})") from None
    if not isinstance(config, dict):
        raise _refuse(path, f"its {name.rsplit('/', 1)[-1]} is malformed")
    pattern = _PAYLOAD[prefix]
    for fqn, meta in config.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise _refuse(path, f"its payload {fqn!r} is a pickle, which runs code when loaded")
        if not pattern.fullmatch(str(meta.get("path_name", ""))):
            raise _refuse(path, f"its payload {fqn!r} is not a plain tensor")


def check_pt2(path: Path) -> None:
    """Raise :class:`ModelError` unless ``path`` is a ``.pt2`` archive that loads without code.

    Args:
        path: the file to inspect; nothing in it is unpickled or evaluated.
    """
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{path} is not a .pt2 archive (torch.export.save writes a zip file)")
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or any("/" not in n for n in names):
            raise _refuse(path, "it is not laid out as torch.export.save writes archives")
        root = roots.pop() + "/"
        rel = [n[len(root) :] for n in names]
        models = _program_names(path, rel)
        if "archive_format" not in rel or zf.read(root + "archive_format").strip() != b"pt2":
            raise _refuse(path, "it is not a current-format .pt2 archive (archive_format)")
        if models != ["model"]:
            raise _refuse(path, f"it holds the programs {models}, not one named 'model'")
        for config, prefix in (
            ("data/weights/model_weights_config.json", "data/weights/"),
            ("data/constants/model_constants_config.json", "data/constants/"),
        ):
            if config not in rel:
                raise _refuse(path, f"it has no {config}")
            _check_payload_config(path, zf, root + config, prefix)
        inputs = root + "data/sample_inputs/model.pt"
        if inputs in names:
            # torch retries a failed weights_only=True load with weights_only=False
            try:
                torch.load(io.BytesIO(zf.read(inputs)), weights_only=True)
            except Exception:
                raise _refuse(path, "its sample inputs are not plain tensors") from None
        try:
            program = json.loads(zf.read(root + "models/model.json"))
        except ValueError as exc:
            raise _refuse(path, f"its program cannot be read ({exc})") from None
    _check_program(path, program)


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` looks like a TorchScript archive (``torch.jit.save``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def _program_names(path: Path, rel: list[str]) -> list[str]:
    """The programs (``models/*.json``) of an archive whose other files are all expected."""
    models = []
    for name in rel:
        folder, _, leaf = name.rpartition("/")
        if name in _TOP_FILES:
            continue
        if folder == "models" and leaf.endswith(".json"):
            models.append(leaf[: -len(".json")])
        elif folder == "data/sample_inputs" and leaf.endswith(".pt"):
            continue
        elif folder + "/" in _PAYLOAD and _PAYLOAD[folder + "/"].fullmatch(leaf):
            continue
        else:
            raise _refuse(path, f"it holds {name!r}, which a plain exported model has not")
    return models


def _check_program(path: Path, program: object) -> None:
    """Refuse a program with guard code, non-torch calls or non-arithmetic shapes."""
    if not isinstance(program, dict) or program.get("guards_code"):
        raise _refuse(path, "its program carries Python guard code")
    for key, value in _walk(program):
        if key in ("target", "as_operator") and isinstance(value, str):
            if not _target_ok(value):
                raise _refuse(path, f"its graph calls {value!r}, which is not a torch operator")
        elif key == "expr_str" and isinstance(value, str) and not _expr_ok(value):
            raise _refuse(path, f"its shape expression {value[:60]!r} is not plain arithmetic")
    for key in program.get("range_constraints") or {}:
        if not _expr_ok(str(key)):
            raise _refuse(path, f"its shape symbol {str(key)[:60]!r} is not plain arithmetic")
