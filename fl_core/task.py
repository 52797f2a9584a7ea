"""The user's code as one unit: model factory, training loop, one client's data loader, evaluation.

A task module is a plain Python file (Flower's template layout: ``task.py`` beside
``client_app.py`` / ``server_app.py``) that defines:

``make_model() -> torch.nn.Module`` (required)
    A fresh model. Called once per process that needs the global model (the server,
    each node); seeded runs seed torch before calling it.
``train_fn(model, data) -> None`` (required)
    The user's own loop, called unchanged on a private copy of the global model with
    one client's data; it trains ``model`` in place (it may use Opacus inside).
``load_data(node_config: Mapping[str, Any]) -> data`` (required)
    Loads ONE client's data. ``node_config`` always holds ``"partition-id"`` (int,
    0-based) and ``"num-partitions"`` (int) - Flower's own key names, which Flower's
    simulation runtime fills too - plus whatever keys the node operator configured
    (e.g. ``"data-dir"``). It must return a map-style dataset (``len()`` and ``[i]``,
    e.g. a ``torch.utils.data.Dataset``) or a ``DataLoader`` over one.
``evaluate(model) -> Mapping[str, float]`` (optional)
    Runs where the global model is (the server) after each committed round; its
    ``"accuracy"`` and ``"loss"`` keys are reported when present.

:func:`load_task` reads such a module, :func:`builtin_task` is privagg's own
digits / Fashion-MNIST demo as one task among others, :meth:`Task.from_objects`
wraps objects already in memory, :func:`node_config_for` builds the node
configuration the in-process simulation hands each client, and
:func:`load_client_data` is the validated call of ``load_data``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from fl_core.errors import DataError, TaskError
from fl_core.provenance import TASK_MODULE_PREFIX

__all__ = [
    "DataSignature",
    "Task",
    "builtin_task",
    "data_signature",
    "load_client_data",
    "load_task",
    "node_config_for",
    "parse_node_config",
]

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"

# name -> (required, signature text shown in errors, number of positional parameters it must accept)
_FUNCTIONS: dict[str, tuple[bool, str, int]] = {
    "make_model": (True, "make_model() -> torch.nn.Module", 0),
    "train_fn": (True, "train_fn(model, data) -> None", 2),
    "load_data": (True, "load_data(node_config: Mapping[str, Any]) -> data", 1),
    "evaluate": (False, "evaluate(model) -> Mapping[str, float]", 1),
}


@dataclass(frozen=True)
class Task:
    """The user's model factory, training loop, data loader and (optional) evaluation.

    Attributes:
        make_model: returns the model to federate.
        train_fn: the user's ``train_fn(model, data)``.
        load_data: ``load_data(node_config)`` returns one client's data.
        evaluate: ``evaluate(model)`` on the server, or None.
        origin: where it came from (``file:PATH``, ``module:NAME``, ``builtin:...``, ``objects``).
        sha256: SHA-256 of the task's source file, when it came from one (recorded in the
            ledger header, so a resumed run refuses an edited task).
        builtin: true for privagg's own demo task (options such as ``--model`` and
            ``--lr`` apply to it only).
    """

    make_model: Callable[[], nn.Module]
    train_fn: Callable[[nn.Module, Any], Any]
    load_data: Callable[[Mapping[str, Any]], Any]
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None
    origin: str = "objects"
    sha256: str | None = None
    builtin: bool = False
    extras: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_objects(
        cls,
        model: nn.Module,
        train_fn: Callable[[nn.Module, Any], Any],
        client_data: Sequence[Any],
        *,
        evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
    ) -> Task:
        """A task around objects already in memory: ``model`` itself is the global model (never copied
        or replaced), ``client_data[i]`` is the data of partition ``i`` (client ``i + 1``).

        Raises:
            TaskError: ``model`` is not a torch Module, a function is not callable, or
                ``client_data`` is not a non-empty sequence.
        """
        if not isinstance(model, nn.Module):
            raise TaskError(
                f"model must be a torch.nn.Module instance, got {type(model).__name__}", function="make_model"
            )
        _check_callable(train_fn, "train_fn", "argument")
        if evaluate is not None:
            _check_callable(evaluate, "evaluate", "argument")
        if isinstance(client_data, (str, bytes)) or not isinstance(client_data, Sequence) or len(client_data) == 0:
            raise TaskError(
                "client_data must be a non-empty sequence with one dataset per client "
                f"(client_data[i] is client i + 1's), got {type(client_data).__name__}",
                function="load_data",
            )
        data = list(client_data)

        def load_data(node_config: Mapping[str, Any]) -> Any:
            return data[int(node_config[PARTITION_ID])]

        return cls(
            make_model=lambda: model,
            train_fn=train_fn,
            load_data=load_data,
            evaluate=evaluate,
            origin="objects",
            extras={"num_partitions": len(data)},
        )


# -- loading a task module ------------------------------------------------------------


_LOCK = threading.Lock()


def load_task(spec: str | Path | ModuleType) -> Task:
    """Load a task from a module object, a path to a ``.py`` file, or a dotted module name.

    A file is imported under a private module name; its folder is put at the front of
    ``sys.path`` (as ``python FILE`` would) so it can import its sibling modules.

    Raises:
        TaskError: the file or module cannot be found or imported, or a required function
            is missing, not callable, or cannot take the arguments privagg passes.
    """
    if isinstance(spec, ModuleType):
        module, origin = spec, f"module:{spec.__name__}"
    else:
        text = str(spec)
        if not text:
            raise TaskError("the task is empty: give a path to a .py file or a dotted module name")
        path = Path(text)
        if text.endswith(".py") or path.exists() or "/" in text or "\\" in text:
            module, origin = _import_file(path), f"file:{path.resolve()}"
        else:
            module, origin = _import_name(text), f"module:{text}"
    found: dict[str, Any] = {}
    for name, (required, sig, _n) in _FUNCTIONS.items():
        fn = getattr(module, name, None)
        if fn is None:
            if required:
                raise TaskError(
                    f"task {origin} defines no {name}: a task module must define {sig}", function=name
                )
            continue
        _check_callable(fn, name, f"task {origin}")
        found[name] = fn
    source = getattr(module, "__file__", None)
    sha = _file_sha256(Path(source)) if source else None
    return Task(
        make_model=found["make_model"],
        train_fn=found["train_fn"],
        load_data=found["load_data"],
        evaluate=found.get("evaluate"),
        origin=origin,
        sha256=sha,
    )


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise TaskError(f"task file {path} does not exist (give a path to a .py file or a dotted module name)")
    resolved = path.resolve()
    name = TASK_MODULE_PREFIX + hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    with _LOCK:
        if name in sys.modules:
            return sys.modules[name]
        folder = str(resolved.parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        spec = importlib.util.spec_from_file_location(name, resolved)
        if spec is None or spec.loader is None:
            raise TaskError(f"cannot import task file {path}: not a Python source file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise TaskError(f"importing task file {path} raised {type(exc).__name__}: {exc}") from exc
    return module


def _import_name(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise TaskError(
            f"cannot import task module {name!r}: {exc} (give a path to a .py file or an importable module name)"
        ) from exc
    except Exception as exc:
        raise TaskError(f"importing task module {name!r} raised {type(exc).__name__}: {exc}") from exc


def _check_callable(fn: Any, name: str, where: str) -> None:
    sig_text, n = _FUNCTIONS[name][1], _FUNCTIONS[name][2]
    if not callable(fn):
        raise TaskError(f"{where}: {name} is a {type(fn).__name__}, not a function: expected {sig_text}", function=name)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C callables have no signature: trust them
        return
    try:
        sig.bind(*([None] * n))
    except TypeError as exc:
        raise TaskError(
            f"{where}: {name}{sig} cannot be called the way privagg calls it ({exc}): expected {sig_text}",
            function=name,
        ) from exc


def _file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


# -- node configuration ----------------------------------------------------------------


def parse_node_config(text: str | None) -> dict[str, Any]:
    """Parse ``"key=value key2=value2"`` (Flower's ``--node-config`` syntax) into a dict.

    Values are kept as strings, except integers and floats, which are converted; quote a
    value (``key="a b"``) to keep spaces.

    Raises:
        TaskError: an item without ``=``, an empty key, or one of the keys privagg sets.
    """
    import shlex

    out: dict[str, Any] = {}
    if not text:
        return out
    try:
        items = shlex.split(text)
    except ValueError as exc:
        raise TaskError(f"--node-config {text!r} cannot be parsed: {exc}") from exc
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise TaskError(f"--node-config item {item!r} is not key=value (e.g. 'data-dir=shards/{{partition-id}}')")
        if key in (PARTITION_ID, NUM_PARTITIONS):
            raise TaskError(f"--node-config cannot set {key!r}: privagg sets it for each client")
        out[key] = _scalar(value)
    return out


def _scalar(value: str) -> Any:
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return value


def node_config_for(client: int, num_partitions: int, operator: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The node configuration client ``client`` (1-based) gets in the in-process simulation.

    ``{"partition-id": client - 1, "num-partitions": num_partitions, **operator}``, where
    ``{partition-id}`` (and ``{num-partitions}``) inside an operator's string value is
    replaced by the client's own, so ``data-dir=shards/client-{partition-id}`` names the
    shard a Flower deployment gives that node.

    Raises:
        DataError: ``client`` is not in ``1..num_partitions``.
        TaskError: a template names another placeholder.
    """
    if not 1 <= client <= num_partitions:
        raise DataError(f"client {client} is not in 1..{num_partitions}", client=client)
    ids = {PARTITION_ID: client - 1, NUM_PARTITIONS: num_partitions}
    out: dict[str, Any] = {}
    for key, value in (operator or {}).items():
        if isinstance(value, str) and "{" in value:
            text = value
            for k, v in ids.items():
                text = text.replace("{" + k + "}", str(v))
            if "{" in text and "}" in text[text.index("{") :]:
                raise TaskError(
                    f"node-config value {key}={value!r} names an unknown placeholder; "
                    "only {partition-id} and {num-partitions} are substituted"
                )
            out[key] = _scalar(text) if text != value else value
        else:
            out[key] = value
    out.update(ids)
    return out


# -- one client's data, checked ------------------------------------------------------


@dataclass(frozen=True)
class DataSignature:
    """What one sample of a client's data looks like: per field, a type and (for arrays) dtype and shape."""

    fields: tuple[str, ...]

    def __str__(self) -> str:
        return "(" + ", ".join(self.fields) + ")" if len(self.fields) != 1 else self.fields[0]


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{str(dtype).removeprefix('torch.')}[{','.join(str(int(s)) for s in shape)}]"
    return type(value).__name__


def _dataset_of(data: Any) -> Any:
    from torch.utils.data import DataLoader

    return data.dataset if isinstance(data, DataLoader) else data


def data_signature(data: Any) -> DataSignature | None:
    """The signature of the first sample of ``data`` (a dataset or a DataLoader), or None if it
    cannot be indexed."""
    ds = _dataset_of(data)
    try:
        sample = ds[0]
    except Exception:
        return None
    if isinstance(sample, (tuple, list)):
        return DataSignature(tuple(_describe(v) for v in sample))
    if isinstance(sample, Mapping):
        items = sorted(sample.items(), key=lambda kv: str(kv[0]))
        return DataSignature(tuple(f"{k}: {_describe(v)}" for k, v in items))
    return DataSignature((_describe(sample),))


_EXPECTED = "a map-style dataset (len() and [i], e.g. a torch.utils.data.Dataset) or a DataLoader over one"


def check_client_data(
    data: Any,
    *,
    client: int,
    source: str,
    reference: tuple[int, DataSignature] | None = None,
) -> DataSignature | None:
    """Check one client's data; return its sample signature.

    ``source`` names what produced it (``load_data`` or ``client_data[i]``); ``reference``
    is another client's (id, signature) to compare with.

    Raises:
        DataError: None, not a dataset, empty, or samples unlike the reference client's.
    """
    where = f"{source} for client {client}"
    if data is None:
        raise DataError(f"{where} returned None: expected {_EXPECTED}", function=source, client=client)
    ds = _dataset_of(data)
    if isinstance(ds, (str, bytes, Mapping)) or not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__")):
        raise DataError(
            f"{where} returned a {type(data).__name__}: expected {_EXPECTED}", function=source, client=client
        )
    try:
        n = len(ds)
    except TypeError as exc:
        raise DataError(
            f"{where} returned a {type(data).__name__} without a length: expected {_EXPECTED}",
            function=source,
            client=client,
        ) from exc
    if n == 0:
        raise DataError(
            f"{where} returned an empty dataset: every client needs at least one example "
            "(check the node's data path, or leave that client out of the federation)",
            function=source,
            client=client,
        )
    sig = data_signature(ds)
    if reference is not None and sig is not None and reference[1] != sig:
        other, ref_sig = reference
        raise DataError(
            f"{where} returned samples shaped {sig}, but client {other}'s are {ref_sig}: every client's "
            "data must have one sample shape and dtype (the clients train one model)",
            function=source,
            client=client,
        )
    return sig


def load_client_data(
    task: Task,
    node_config: Mapping[str, Any],
    *,
    client: int,
    reference: tuple[int, DataSignature] | None = None,
) -> tuple[Any, DataSignature | None]:
    """Call ``task.load_data(node_config)`` for ``client`` and check what it returned.

    Raises:
        DataError: ``load_data`` raised, or returned None, a non-dataset, an empty dataset,
            or samples unlike ``reference``'s; the message names ``load_data``, the client
            and what was expected.
    """
    try:
        data = task.load_data(dict(node_config))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"load_data raised {type(exc).__name__} for client {client} (node config {dict(node_config)}): {exc}",
            function="load_data",
            client=client,
        ) from exc
    sig = check_client_data(data, client=client, source="load_data", reference=reference)
    return data, sig


# -- privagg's own demo as a task ---------------------------------------------------------

_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {"digits": ((1, 8, 8), 10), "fashion-mnist": ((1, 28, 28), 10)}
_DATA_CACHE: dict[tuple[Any, ...], Any] = {}


def builtin_task(cfg: Any, data: Any = None) -> Task:
    """privagg's own demo (``cfg.dataset`` split over ``cfg.clients``, ``cfg.model``, local SGD) as a Task.

    ``data``: a :class:`fl_core.data.FederatedData` to use instead of loading ``cfg.dataset``
    (the built-in model and loop on other data). The dataset is loaded once per process,
    when a client's data or the test set is first needed (the server of a networked run
    that does not evaluate never loads it).
    """
    from fl_core.models import build_model
    from fl_core.training import make_sgd_train_fn

    holder: dict[str, Any] = {"data": data}

    def federated() -> Any:
        if holder["data"] is None:
            key = (cfg.dataset, cfg.clients, cfg.partition, cfg.alpha, cfg.seed)
            if key not in _DATA_CACHE:
                from fl_core.data import load_federated_data

                _DATA_CACHE.clear()  # one dataset per process is enough for the demo
                _DATA_CACHE[key] = load_federated_data(cfg)
            holder["data"] = _DATA_CACHE[key]
        return holder["data"]

    if data is not None:
        shape, classes = tuple(data.input_shape), int(data.num_classes)
        name = data.name
    else:
        shape, classes = _SHAPES[cfg.dataset]
        name = cfg.dataset

    def make_model() -> nn.Module:
        return build_model(cfg.model, shape, classes)

    def load_data(node_config: Mapping[str, Any]) -> Any:
        fd = federated()
        return fd.clients[int(node_config[PARTITION_ID])]

    evaluator: dict[str, Any] = {}

    def evaluate(model: nn.Module) -> Mapping[str, float]:
        if "fn" not in evaluator:
            from fl_core.evaluation import make_evaluator

            evaluator["fn"] = make_evaluator(federated().test)
        return evaluator["fn"](model)  # type: ignore[no-any-return]

    train_fn = make_sgd_train_fn(
        epochs=cfg.local_epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=0 if cfg.seed is None else cfg.seed,
        record_dp=cfg.record_noise_multiplier is not None,
    )
    return Task(
        make_model=make_model,
        train_fn=train_fn,
        load_data=load_data,
        evaluate=evaluate,
        origin=f"builtin:{name}",
        builtin=True,
        extras={"federated_data": federated},
    )
