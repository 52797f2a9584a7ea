"""Build and execute a whole federated run from a :class:`~fl_core.config.RunConfig` and a task.

:func:`build_federation` assembles the round loop around the user's objects (a
:class:`~fl_core.task.Task`: model factory, ``train_fn``, one client's loader,
``evaluate``), adding the DP policy, accountant, budget and ledger the configuration asks
for; nothing the user passes is replaced. :func:`execute` runs the planned rounds,
retrying aborted attempts with fresh cohorts, and (with a run folder) writes metrics,
atomic checkpoints bound to the ledger, the final model and the summary.
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from threadpoolctl import threadpool_limits

from fl_core.config import DEFAULT_SAMPLING_RATE, RunConfig
from fl_core.data import FederatedData, load_federated_data
from fl_core.errors import ConfigError, LedgerConflictError, TaskError, TooManyAbortsError
from fl_core.federation import Federation, RoundResult
from fl_core.sampling import Sampler
from fl_core.task import Task, builtin_task, load_task, node_config_for, parse_node_config

__all__ = [
    "Role",
    "RunSummary",
    "build_federation",
    "execute",
    "load_federated_data",
    "make_rng",
    "make_sampler",
    "resolve_device",
]

Role = Literal["simulation", "server", "node"]


def make_rng(seed: int | None) -> Any:
    """OS CSPRNG when ``seed`` is None; a deterministic source otherwise (experiments only)."""
    from dp.randomness import SeededRandomSource, SystemRandomSource

    return SystemRandomSource() if seed is None else SeededRandomSource(seed)


def make_sampler(cfg: RunConfig) -> Sampler:
    if cfg.sampling_rate is not None:
        return Sampler.poisson(cfg.clients, cfg.sampling_rate)
    if cfg.per_round is not None:
        return Sampler.fixed_size(cfg.clients, cfg.per_round)
    return Sampler.poisson(cfg.clients, DEFAULT_SAMPLING_RATE)


def resolve_device(name: str) -> str:
    """``cpu``, ``cuda[:N]``, or ``auto`` (cuda when torch sees a GPU, else cpu).

    Raises:
        ConfigError: ``cuda`` asked for but torch sees no CUDA device.
    """
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {name}: torch sees no CUDA device (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda or 'none'}); use --device cpu or auto",
            option="device",
        )
    return name


def resolve_task(cfg: RunConfig, task: Task | FederatedData | None) -> Task:
    """The task a run uses: the one given, ``cfg.task``, or privagg's demo (on ``task`` if it is data)."""
    if isinstance(task, Task):
        return task
    if task is None and cfg.task is not None:
        return load_task(cfg.task)
    return builtin_task(cfg, task)


def check_ledger_path(path: str | None) -> None:
    """Refuse a ledger path under a file (``run.toml/l.jsonl``) or that is a folder, with a clear message.

    Raises:
        ConfigError: a parent of the path is a file, or the path is a folder.
    """
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ConfigError(
            f"--ledger {path} is a folder; give a file path such as {p / 'ledger.jsonl'}", option="ledger"
        )
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"--ledger {path}: {parent} is a file, not a folder; give a path whose parent is a folder",
                    option="ledger",
                )
            break


def build_federation(
    cfg: RunConfig,
    task: Task | FederatedData | None = None,
    *,
    role: Role = "simulation",
    client: int | None = None,
    node_config: Mapping[str, Any] | None = None,
    open_ledger: bool | None = None,
    resume: bool = False,
    run_description: Mapping[str, Any] | None = None,
) -> tuple[Federation, FederatedData | None, dict[str, Any]]:
    """Everything a run needs, built from ``cfg`` around the user's task (no rounds run yet).

    Args:
        cfg: the run's options (DP mode, clip, noise or target epsilon, budget, ledger,
            secure sum, sampling, seed, device, ...).
        task: the user's :class:`~fl_core.task.Task` (``Task.from_objects(model, train_fn,
            client_datasets)`` for objects in memory); None loads ``cfg.task`` or, without one,
            privagg's own demo; a :class:`~fl_core.data.FederatedData` runs the demo's model and
            loop on that data. The model the task makes is the global model itself: it is
            trained in place, never copied or replaced.
        role: which party this process is, i.e. where client data comes from:
            ``"simulation"`` - every client in this process, each loaded from ``task.load_data``
            the first time it is sampled (client ``i`` gets ``node_config_for(i, cfg.clients,
            cfg.node_config's keys)``); ``"server"`` - the server of a networked run: no client
            data at all, only the population size ``cfg.clients`` (``fed.client_data[i]`` raises
            DataError); ``"node"`` - one node of a networked run: exactly client ``client``'s
            data, loaded from ``task.load_data(node_config)`` on first use (asking for another
            client's raises DataError). Nodes evaluate nothing and open no ledger.
        client: the node's client id (1-based), with ``role="node"``.
        node_config: the node's configuration (``role="node"``); default
            ``node_config_for(client, cfg.clients, cfg.node_config's keys)``.
        open_ledger: open (or create) the epsilon ledger; default: not on a node.
        resume: the ledger may already hold rounds of this same run (their events are
            charged); without it a ledger with rounds is refused.
        run_description: the description to bind the ledger to (a resumed run passes the
            stored one); default :func:`fl_core.provenance.describe_run` of this run.

    Returns:
        ``(federation, data, extra)``: ``data`` is the FederatedData passed in (else None);
        ``extra`` holds summary fields (``description``, ``ledger``, ``noise_multiplier``, ...)
        and ``"_record_dp"``, the record-level DP wrapper when record-level DP is on.

    Raises:
        TaskError: the task cannot be loaded, or ``make_model`` did not return a Module.
        LedgerConflictError: the ledger's header describes another run, or the ledger already
            holds rounds and ``resume`` is false.
        ConfigError: invalid options (a ledger path under a file, a CUDA device without a GPU, ...).
    """
    from fl_core.provenance import describe_run, description_differences
    from fl_core.sources import ClientSource, OneClient, ServerOnly, TaskClients

    torch.set_num_threads(cfg.threads)
    # numpy's BLAS too: a multithreaded dot product on a loaded machine spins for whole time
    # slices (a 10^5-coordinate clip norm took 12 ms of CPU instead of 0.02 ms).
    threadpool_limits(limits=cfg.threads, user_api="blas")
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    the_task = resolve_task(cfg, task)
    model = the_task.make_model()
    if not isinstance(model, torch.nn.Module):
        raise TaskError(
            f"make_model of {the_task.origin} returned a {type(model).__name__}: expected a torch.nn.Module",
            function="make_model",
        )
    fresh = describe_run(
        cfg,
        task_origin=the_task.origin,
        task_sha256=the_task.sha256,
        builtin=the_task.builtin,
        model=model,
        data_name=task.name if isinstance(task, FederatedData) else None,
    )
    if run_description is not None:
        changed = {k: v for k, v in description_differences(run_description, fresh).items() if k != "model_sha256"}
        if changed:
            raise LedgerConflictError(
                "this run differs from the stored one in " + _diff_text(changed, "stored", "now")
                + " (an edited task file or other options); a resumed run must be the same run",
                differences=changed,
            )
    description = dict(run_description) if run_description is not None else fresh
    rng = make_rng(cfg.seed)
    sampler = make_sampler(cfg)
    operator = parse_node_config(cfg.node_config)
    source: ClientSource
    if role == "simulation":
        source = TaskClients(the_task, cfg.clients, operator)
    elif role == "server":
        source = ServerOnly(cfg.clients)
    elif role == "node":
        if client is None:
            raise ConfigError("role='node' needs the node's client id (client=)", option="role")
        nc = dict(node_config) if node_config is not None else node_config_for(client, cfg.clients, operator)
        source = OneClient(client, cfg.clients, task=the_task, node_config=nc)
    else:
        raise ConfigError(f"role must be simulation, server or node, got {role!r}", option="role")
    if open_ledger is None:
        open_ledger = role != "node"
    train_fn = the_task.train_fn
    record = None
    if cfg.record_noise_multiplier is not None:
        from fl_core.record_dp import RecordDP, RecordDPConfig

        # Accountants (and the labels their Opacus generators are seeded from) are keyed by
        # client id (fl_core.client.current_client), so a seeded run is reproducible across processes.
        record = RecordDP(
            RecordDPConfig(
                noise_multiplier=cfg.record_noise_multiplier, max_grad_norm=cfg.record_clip, delta=cfg.delta
            ),
            rng=rng.spawn("record-dp"),
        )
        train_fn = record.wrap(train_fn)
    from fl_core.privacy import build_privacy

    if open_ledger and cfg.dp != "none":
        check_ledger_path(cfg.ledger)
    ledger_existed = cfg.ledger is not None and Path(cfg.ledger).exists()
    privacy_kwargs, extra = build_privacy(
        cfg, sampler, model, open_ledger=open_ledger, run_description=description
    )
    ledger = privacy_kwargs.get("ledger")
    try:
        if ledger is not None:
            _check_ledger(ledger, description, resume=resume)
        fed = Federation(
            model,
            train_fn,
            source,
            rng=rng,
            secure_sum=cfg.secure_sum,
            secure_sum_options={"graph": cfg.graph},
            sampler=sampler,
            server_lr=cfg.server_lr,
            server_momentum=cfg.server_momentum,
            bits=cfg.bits,
            eval_fn=the_task.evaluate if role != "node" else None,
            dropout=cfg.dropout,
            buffers=cfg.buffers,  # type: ignore[arg-type]
            device=device,
            record_dp=record,
            **privacy_kwargs,
        )
        check = getattr(fed.privacy, "check_inflation", None)
        if check is not None:
            extra["rounding_inflation"] = check(fed.plan.scale)
    except BaseException:
        if ledger is not None:
            ledger.close()
            if not ledger_existed:
                remove_if_header_only(ledger.path)
        raise
    if ledger is not None and ledger.records:
        fed.resume_accounting(ledger.events, last_round=ledger.last_round, epsilon=ledger.epsilon)
        extra["resumed_from_round"] = ledger.last_round
    extra["_ledger_created"] = ledger is not None and not ledger_existed
    if record is not None:
        extra["_record_dp"] = record
    extra["description"] = description
    extra["task"] = the_task.origin
    extra["device"] = device
    return fed, task if isinstance(task, FederatedData) else None, extra


def _diff_text(diffs: Mapping[str, tuple[Any, Any]], a: str, b: str) -> str:
    return "; ".join(f"{k} ({a}: {va!r}, {b}: {vb!r})" for k, (va, vb) in diffs.items())


def _check_ledger(ledger: Any, description: Mapping[str, Any], *, resume: bool) -> None:
    from fl_core.provenance import description_differences

    diffs = description_differences(ledger.meta, description)
    if diffs:
        raise LedgerConflictError(
            f"the ledger {ledger.path} belongs to another run: its header differs from this run in "
            + _diff_text(diffs, "ledger", "this run")
            + ". One ledger records one run: give a new --ledger path (or --resume the run it belongs to)",
            differences=diffs,
        )
    if ledger.records and not resume:
        raise LedgerConflictError(
            f"the ledger {ledger.path} already holds {len(ledger.records)} rounds of this run: continue it with "
            "--resume DIR (the --out folder of that run), or give a new --ledger path"
        )


def remove_if_header_only(path: Path) -> bool:
    """Delete a ledger file that holds a header and no round (what a failed run would leave behind)."""
    from dp.ledger import inspect_ledger

    try:
        rep = inspect_ledger(path)
    except Exception:
        return False
    if rep.rounds == 0:
        try:
            path.unlink()
            return True
        except OSError:
            return False
    return False


# -- the summary ----------------------------------------------------------------------


@dataclass
class RunSummary:
    """What a run did: this invocation's attempts (``results``) and, for a resumed run, the earlier
    ones read back from the run folder's metrics (``prior``)."""

    config: RunConfig
    results: list[RoundResult]
    wall_s: float
    dim: int
    extra: dict[str, Any] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)
    sampling: dict[str, Any] = field(default_factory=dict)
    prior: list[dict[str, Any]] = field(default_factory=list)
    interrupted: int | None = None
    """The signal that stopped the run (SIGINT 2, SIGTERM 15), or None."""
    failure: str | None = None
    """Why the run stopped with an error after committing rounds (e.g. too many aborts)."""

    def extra_sizes(self) -> dict[str, float]:
        if not self.sizes:
            return {}
        s = sorted(self.sizes)
        return {"min": s[0], "median": s[len(s) // 2], "max": s[-1], "total": sum(s)}

    def final_metrics(self) -> dict[str, float]:
        for r in reversed(self.results):
            if r.metrics and not r.aborted:
                return r.metrics
        for m in reversed(self.prior):
            if m.get("status") != "aborted" and m.get("accuracy") is not None:
                return {k: m[k] for k in ("accuracy", "loss") if k in m}
        return {}

    @property
    def rounds_completed(self) -> int:
        return sum(1 for m in self.prior if m["status"] != "aborted") + sum(1 for r in self.results if not r.aborted)

    @property
    def rounds_aborted(self) -> int:
        return sum(1 for m in self.prior if m["status"] == "aborted") + sum(1 for r in self.results if r.aborted)

    def _epsilon(self) -> float | None:
        if self.results:
            eps = self.results[-1].epsilon
        elif self.prior:
            eps = self.prior[-1].get("epsilon")
        else:
            eps = 0.0 if self.config.dp != "none" else None
        return eps if eps is not None and eps != float("inf") and not math.isnan(eps) else None

    def to_json(self) -> dict[str, Any]:
        m = self.final_metrics()
        rounds = [r for r in self.results if not r.skipped and not r.aborted]
        bytes_pc = (sum(r.bytes_up_per_client for r in rounds) / len(rounds)) if rounds else 0.0
        cfg = self.config
        desc = self.extra.get("description", {})
        builtin = str(self.extra.get("task", "builtin")).startswith("builtin")
        per_round = [p.get("accuracy") for p in self.prior if p["status"] != "aborted"] + [
            r.metrics.get("accuracy") for r in self.results if not r.aborted
        ]
        heads = [r.ledger_head for r in reversed(self.results) if r.ledger_head] + [
            p["ledger_head"] for p in reversed(self.prior) if p.get("ledger_head")
        ]
        out = {
            "accuracy": m.get("accuracy"),
            "loss": m.get("loss"),
            "rounds": self.rounds_completed,
            "rounds_completed": self.rounds_completed,
            "rounds_aborted": self.rounds_aborted,
            "rounds_planned": cfg.rounds,
            "clients": cfg.clients,
            "secure_sum": cfg.secure_sum,
            "dp": cfg.dp,
            "epsilon": self._epsilon(),
            "delta": cfg.delta if (cfg.dp != "none" or cfg.record_noise_multiplier is not None) else None,
            "wall_s": round(self.wall_s, 3),
            "bytes_per_client_per_round": round(bytes_pc, 1),
            "bytes_down_per_client_per_round": round(
                (sum(r.bytes_down_per_client for r in rounds) / len(rounds)) if rounds else 0.0, 1
            ),
            "task": self.extra.get("task"),
            "dataset": cfg.dataset if builtin else None,
            "model": cfg.model if builtin else desc.get("model_class"),
            "model_class": desc.get("model_class"),
            "model_parameters": desc.get("model_parameters"),
            "model_sha256": desc.get("model_sha256"),
            "dim": self.dim,
            "per_round_accuracy": per_round,
            "seed": cfg.seed,
            "partition": cfg.partition if builtin else None,
            "ledger_head": heads[0] if heads else None,
            "cpu_s_by_phase": {
                k: round(sum(r.cpu_s.get(k, 0.0) for r in rounds), 3)
                for k in sorted({k for r in rounds for k in r.cpu_s})
            },
            "sampling": self.sampling,
            "client_sizes": self.extra_sizes(),
            "device": self.extra.get("device", "cpu"),
            "machine": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            },
        }
        for k, v in self.extra.items():
            if not k.startswith("_") and k not in ("description", "task", "device"):
                out[k] = v
        if self.interrupted is not None:
            import signal

            out["interrupted"] = signal.Signals(self.interrupted).name
        if self.failure is not None:
            out["failure"] = self.failure
        return out


# -- executing a run --------------------------------------------------------------------


def execute(
    cfg: RunConfig,
    *,
    on_round: Callable[[RoundResult], None] | None = None,
    data: FederatedData | Task | None = None,
    out: Path | str | None = None,
    resume: bool = False,
    guard: Any = None,
) -> RunSummary:
    """Run ``cfg.rounds`` committed rounds (aborted attempts are retried with fresh cohorts).

    Args:
        cfg: the run's options.
        on_round: called with every attempt's result (committed, skipped or aborted).
        data: the task (or demo data); default ``cfg.task`` or privagg's demo.
        out: the run folder (:mod:`fl_core.checkpoint`): ``run.json``, a checkpoint after
            every committed round, ``metrics.jsonl``, ``model.pt`` and ``summary.json``;
            the ledger defaults to ``out/ledger.jsonl``.
        resume: continue the run stored in ``out`` where its last checkpoint left off
            (``cfg`` should be the stored configuration, see :func:`resume_config`).
        guard: an :class:`fl_core.interrupt.InterruptGuard`; the round in flight commits whole
            or rolls back when a signal arrives, and the summary records the signal.

    With ``cfg.dp == "none"`` no ledger is opened (``privagg run`` refuses ``--ledger`` there).

    Raises:
        ConfigError: a run that completed no round because the budget is spent before
            round 1 (the message names the fix).
        LedgerConflictError, CheckpointError: the ledger or the run folder belongs to another run.
        TooManyAbortsError: more consecutive aborts than ``cfg.max_consecutive_aborts`` before
            any round was committed (after a committed round the summary carries ``failure``).
    """
    from dp.errors import BudgetExceededError
    from fl_core.checkpoint import RunDir, federation_state, restore_federation
    from fl_core.interrupt import Interrupted

    rundir = RunDir(Path(out)) if out is not None else None
    state = None
    prior: list[dict[str, Any]] = []
    description = None
    if rundir is not None and resume:
        _config, description = rundir.read_run()
        state = rundir.load_checkpoint()
        prior = rundir.keep_metrics_through(state)
    elif rundir is not None:
        rundir.check_new()
        if cfg.ledger is None and cfg.dp != "none":
            cfg = cfg.replace(ledger=str(rundir.default_ledger.resolve()))
        if cfg.task is not None and Path(cfg.task).exists():
            cfg = cfg.replace(task=str(Path(cfg.task).resolve()))
        if cfg.ledger is not None:
            cfg = cfg.replace(ledger=str(Path(cfg.ledger).resolve()))
    created_run = False
    fed, _data, extra = build_federation(cfg, data, resume=resume, run_description=description)
    ledger = fed.accounting.ledger
    ledger_created = bool(extra.pop("_ledger_created", False))
    try:
        if rundir is not None and not resume:
            rundir.create(_stored_config(cfg), extra["description"])
            created_run = True
            rundir.save_checkpoint(federation_state(fed))  # round 0: the initial model
        if state is not None:
            restore_federation(fed, state)
        critical = guard.critical if guard is not None else contextlib.nullcontext

        def on_commit(res: RoundResult) -> None:  # inside fed.commit_guard: commits whole
            if rundir is not None:
                rundir.save_checkpoint(federation_state(fed))
                rundir.append_metrics(res)

        def on_abort(res: RoundResult) -> None:
            if rundir is not None:
                with critical():
                    rundir.append_metrics(res)
                    rundir.save_checkpoint(federation_state(fed))  # the next attempt's draw is keyed by it

        fed.commit_guard = critical
        fed.on_commit = on_commit
        fed.on_abort = on_abort
        t0 = time.perf_counter()
        results: list[RoundResult] = []
        stop_reason = None
        interrupted: int | None = None
        failure: str | None = None
        remaining = max(0, cfg.rounds - fed.round)
        history_at = len(fed.history)
        try:
            for res in fed.rounds(remaining, max_consecutive_aborts=cfg.max_consecutive_aborts):
                results.append(res)
                if on_round is not None:
                    on_round(res)
        except BudgetExceededError as exc:
            stop_reason = str(exc)
        except TooManyAbortsError as exc:
            if fed.round == 0:
                raise
            failure = str(exc)
        except Interrupted as exc:
            interrupted = exc.signum
            # A signal that arrived while a round committed is raised once the commit is done:
            # that round is in the history, not yet in the results.
            seen = {id(r) for r in results}
            results.extend(r for r in fed.history[history_at:] if id(r) not in seen)
        summary = _summarize(cfg, fed, results, extra, time.perf_counter() - t0, prior, stop_reason)
        summary.interrupted = interrupted
        summary.failure = failure
        if summary.rounds_completed == 0 and cfg.rounds > 0 and interrupted is None:
            raise ConfigError(
                "no round ran: "
                + (stop_reason or "every attempt aborted")
                + ". The privacy budget is spent before round 1: raise --target-epsilon, raise --noise-multiplier, "
                "or lower --rounds / the sampling rate (privagg plan shows epsilon per round)",
                option="target_epsilon",
            )
        if rundir is not None:
            with critical():
                rundir.save_model(fed.model)
                rundir.save_summary(summary.to_json())
        return summary
    except BaseException as exc:
        if rundir is not None and created_run and fed.round == 0 and not isinstance(exc, Interrupted):
            # A run that failed before committing anything leaves no run folder to resume.
            for p in (rundir.run_file, rundir.checkpoint_file, rundir.metrics_file):
                with contextlib.suppress(OSError):
                    p.unlink()
        raise
    finally:
        fed.close()
        if ledger is not None and ledger_created:
            remove_if_header_only(ledger.path)


def _stored_config(cfg: RunConfig) -> dict[str, Any]:
    return cfg.to_dict()


def resume_config(out: Path | str, **overrides: Any) -> RunConfig:
    """The configuration stored in run folder ``out``, with ``overrides`` (only options that do not
    change the run: ``threads``, ``device``, ``max_consecutive_aborts``).

    Raises:
        CheckpointError: no run in ``out``.
        ConfigError: an override that would change the run.
    """
    from fl_core.checkpoint import RunDir

    allowed = {"threads", "device", "max_consecutive_aborts"}
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise ConfigError(
            "--resume continues the run stored in the folder with its own options; drop "
            + ", ".join("--" + b.replace("_", "-") for b in bad),
            option=bad[0],
        )
    config, _desc = RunDir(Path(out)).read_run()
    return RunConfig(**{**config, **overrides})


def _summarize(
    cfg: RunConfig,
    fed: Federation,
    results: list[RoundResult],
    extra: dict[str, Any],
    wall_s: float,
    prior: list[dict[str, Any]],
    stop_reason: str | None,
) -> RunSummary:
    extra = dict(extra)
    from fl_core.accounting import epsilon_report

    extra.update(epsilon_report(fed))  # epsilon per adversary, and which one the budget holds against
    record = extra.pop("_record_dp", None)
    if record is not None:
        rep = record.report()["record_level"]
        per = [v["epsilon"] for v in rep.pop("per_client").values()]
        rep["epsilon_median"] = sorted(per)[len(per) // 2] if per else 0.0
        rep["clients_trained"] = len(per)
        extra["record_level"] = rep
    if stop_reason is not None:
        extra["stopped"] = stop_reason
    sizes = []
    loaded = getattr(fed.source, "loaded", None)
    if loaded is not None:
        for c in loaded:
            try:
                sizes.append(len(fed.source.get(c)))
            except TypeError:
                pass
    sampling = {"scheme": fed.sampler.scheme.value, "rate": fed.sampler.rate, "population": fed.sampler.population}
    return RunSummary(cfg, results, wall_s, fed.dim, extra, sizes=sizes, sampling=sampling, prior=prior)
