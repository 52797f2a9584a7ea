"""privagg's server side as a Flower strategy: the user's ServerApp swaps ``FedAvg`` for ``PrivAgg``.

A Flower ServerApp that trains with ``FedAvg(...).start(grid=..., initial_arrays=...,
num_rounds=..., evaluate_fn=...)`` adds private aggregation by building a :class:`PrivAgg`
from its task and run configuration instead; ``start`` takes the same arguments and
returns Flower's :class:`~flwr.serverapp.strategy.Result`::

    strategy = PrivAgg(task, context.run_config)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                            num_rounds=3, evaluate_fn=evaluate)

Each round samples the cohort and checks the budget, runs the secure sum with the
nodes' :func:`~fl_core.transport.flower.mod.privagg_mod`, decodes and (central mode)
noises the sum, steps the server optimizer and charges the epsilon ledger
(:func:`fl_core.transport.flower.server.run_privagg`). The server holds no client data.

Run configuration: privagg's options (``privagg run``'s, plus the transport's, see
docs/flower.md) are the keys of a ``[tool.flwr.app.config.privagg]`` table, i.e. run-config
keys ``privagg.<option>``; the app's other keys are its own. An app whose run
configuration has no ``privagg.`` key at all is a privagg-only app: every key must then be
a privagg option. An unknown ``privagg.`` key is an error, never ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.serverapp.strategy import Result

from fl_core.config import RunConfig
from fl_core.errors import ConfigError
from fl_core.transport.flower.options import FlowerOptions, parse_run_config

__all__ = ["PrivAgg", "PrivAggResult", "privagg_run_config"]


@dataclass
class PrivAggResult(Result):
    """Flower's :class:`~flwr.serverapp.strategy.Result` plus the run's privacy.

    ``privacy`` holds epsilon per adversary exactly as ``privagg run --json`` reports it
    (:func:`fl_core.accounting.epsilon_report`): ``epsilon`` (the one the budget holds
    against), ``epsilon_enforced_on`` (``"server"`` or ``"public"``), ``epsilon_vs_server``
    (None when unbounded, i.e. central mode, with ``epsilon_vs_server_reason``) and
    ``epsilon_vs_public``, at the run's delta. Empty without DP.
    """

    privacy: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        lines = [f"\t{k}: {v}" for k, v in self.privacy.items()]
        return super().__repr__() + ("\nPrivacy:\n" + "\n".join(lines) + "\n" if lines else "")

PREFIX = "privagg."


def privagg_run_config(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The privagg keys of a Flower run configuration (see the module docstring)."""
    mine = {k: v for k, v in run_config.items() if k.startswith(PREFIX)}
    return mine if mine else dict(run_config)


class PrivAgg:
    """Federated training with DP, secure aggregation and an epsilon ledger, as a Flower strategy.

    Args:
        task: the user's task (module, dotted name, ``.py`` path or :class:`fl_core.task.Task`):
            its ``make_model`` gives the global model's structure, its optional ``evaluate``
            runs on the server after each round; None is privagg's built-in demo.
        run_config: the app's run configuration (``context.run_config``).
        config, options: a :class:`RunConfig` and :class:`FlowerOptions` instead of
            ``run_config``.

    Raises:
        ConfigError: an unknown privagg key or an invalid option.
    """

    def __init__(
        self,
        task: Any = None,
        run_config: Mapping[str, Any] | None = None,
        *,
        config: RunConfig | None = None,
        options: FlowerOptions | None = None,
    ) -> None:
        if run_config is not None and (config is not None or options is not None):
            raise ConfigError("give run_config or config/options, not both", option="run_config")
        if run_config is not None:
            config, options = parse_run_config(privagg_run_config(run_config))
        self.task = task
        self.config = config if config is not None else RunConfig()
        self.options = options if options is not None else FlowerOptions()
        self.report: Any = None

    def start(
        self,
        grid: Any,
        initial_arrays: Any = None,
        num_rounds: int | None = None,
        timeout: float | None = None,
        train_config: Any = None,
        evaluate_config: Any = None,
        evaluate_fn: Callable[[int, Any], Any] | None = None,
    ) -> Any:
        """Run the rounds; returns Flower's ``Result`` (final arrays, server-side evaluation metrics),
        as a :class:`PrivAggResult` whose ``privacy`` is the run's epsilon per adversary.

        Args:
            grid: the ServerApp's grid.
            initial_arrays: the initial global model (an ``ArrayRecord`` of the task model's
                state dict); None: the task's ``make_model()`` as built under the run's seed.
            num_rounds: rounds to run (default: the run configuration's ``rounds``).
            timeout: seconds to wait for each round's opening replies (default: ``train-timeout``).
            train_config, evaluate_config: not supported (privagg calls ``train_fn(model,
                data)``, which takes no per-round configuration): refused if not empty.
            evaluate_fn: ``evaluate_fn(server_round, arrays) -> MetricRecord | None``, called
                before the first round (round 0) and after each committed round, as Flower's
                strategies call it.

        Raises:
            ConfigError: a train or evaluate configuration was given (or, with ``schedule = "async"``,
                an impossible asynchronous setting; :mod:`fl_core.transport.flower.async_server`).
            TaskError: ``initial_arrays`` does not fit the task's model.
            fl_core.transport.flower.server.NodeUnavailableError: the nodes did not all start.
            fl_core.errors.TooManyAbortsError: more than ``max-consecutive-aborts`` attempts in a
                row aborted (each aborted attempt is retried with a fresh cohort; the model and
                ledger keep the last committed round).
        """
        from flwr.app import ArrayRecord, MetricRecord

        from fl_core.transport.flower.client import node_task
        from fl_core.transport.flower.server import run_privagg

        for name, value in (("train_config", train_config), ("evaluate_config", evaluate_config)):
            if value:
                raise ConfigError(
                    f"PrivAgg.start does not send {name}: the task's train_fn(model, data) takes none; "
                    "put per-run settings in the task module",
                    option=name,
                )
        cfg = self.config if num_rounds is None else self.config.replace(rounds=int(num_rounds))
        options = self.options
        if timeout is not None:
            options = FlowerOptions(**{**_as_dict(options), "train_timeout": float(timeout)})
        task = node_task(self.task, cfg)
        if initial_arrays is not None:
            task = _with_initial(task, initial_arrays)
        result = PrivAggResult()

        def evaluate(server_round: int, model: Any) -> None:
            if evaluate_fn is None:
                return
            metrics = evaluate_fn(server_round, ArrayRecord(model.state_dict()))
            if metrics is not None:
                result.evaluate_metrics_serverapp[server_round] = MetricRecord(dict(metrics))

        def on_round(res: Any, fed: Any) -> None:
            if res.metrics:
                result.train_metrics_clientapp[res.round] = MetricRecord(
                    {k: float(v) for k, v in res.metrics.items() if isinstance(v, (int, float))}
                )
            evaluate(res.round, fed.model)

        if cfg.schedule == "async":  # buffered asynchronous training (fl_core.transport.flower.async_server)
            from fl_core.transport.flower.async_server import run_privagg_async as run_privagg
        self.report = run_privagg(
            grid, cfg, options, task=task, on_round=on_round, on_start=lambda fed: evaluate(0, fed.model)
        )
        if self.report.model is not None:
            result.arrays = ArrayRecord(self.report.model.state_dict())
        result.privacy = self.report.privacy
        return result


def _as_dict(options: FlowerOptions) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(options, f.name) for f in fields(options)}


def _with_initial(task: Any, arrays: Any) -> Any:
    """``task`` whose ``make_model`` returns its model loaded with ``arrays`` (the user's initial weights)."""
    from dataclasses import replace

    from fl_core.errors import TaskError

    state = arrays.to_torch_state_dict() if hasattr(arrays, "to_torch_state_dict") else dict(arrays)

    def make_model() -> Any:
        model = task.make_model()
        try:
            model.load_state_dict(state)
        except (RuntimeError, KeyError) as exc:
            raise TaskError(
                f"initial_arrays do not fit the model make_model returns ({exc}): pass "
                "ArrayRecord(model.state_dict()) of that model",
                function="make_model",
            ) from exc
        return model

    return replace(task, make_model=make_model)
