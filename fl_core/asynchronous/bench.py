"""Time to accuracy on the simulated clock: buffered asynchronous training against synchronous FedAvg.

Both runs use the same data split, model, client training, DP noise multiplier and secure
sum, the same per-client speeds (one draw from the same speed distribution and seed) and
releases of the same size (a synchronous cohort of K, a buffer of K), so each release
carries the same noise. The synchronous run goes first; its largest per-client
participation count becomes the asynchronous run's contribution cap, so the largest
per-client epsilon against the server (composed over the releases a client is in, no
amplification) is the same in both. The target accuracy is the synchronous run's final
accuracy (mean of its last ``window`` evaluations); each run's time to target is the
simulated time of the first evaluation at which the mean of its last ``window``
evaluations reaches it, and the speedup is the synchronous time over the asynchronous one.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dp.adversary import epsilon_vs_server, epsilon_vs_server_per_client
from fl_core.asynchronous.loop import AsyncFederation
from fl_core.asynchronous.options import AsyncOptions
from fl_core.asynchronous.runner import build_async_federation
from fl_core.asynchronous.speeds import SpeedModel
from fl_core.asynchronous.staleness import StalenessWeight
from fl_core.asynchronous.sync_clock import SyncClock, clocked_rounds, sync_exchanges_after_input
from fl_core.config import RunConfig
from fl_core.data import FederatedData, load_federated_data
from fl_core.errors import ConfigError
from fl_core.runner import build_federation

__all__ = ["AsyncBenchSpec", "run_async_bench", "running_mean", "time_to_target", "plot_curves"]


@dataclass(frozen=True)
class AsyncBenchSpec:
    """The benchmark's settings (defaults: the README figure)."""

    dataset: str = "fashion-mnist"
    clients: int = 300
    model: str = "logreg"
    buffer: int = 20
    concurrency: int = 40
    sync_rounds: int = 60
    noise_multiplier: float = 2.0
    clip: float = 1.0
    dp: str = "distributed"
    secure_sum: str = "masking"
    local_epochs: int = 1
    lr: float = 0.5
    server_lr: float = 1.0
    server_momentum: float = 0.5
    staleness: StalenessWeight = field(default_factory=lambda: StalenessWeight("constant"))
    speed: SpeedModel = field(default_factory=lambda: SpeedModel.lognormal(median_s=10.0, sigma=1.25))
    window: int = 5
    seed: int = 0
    delta: float = 1e-5
    client_max_epsilon: float | None = None

    def __post_init__(self) -> None:
        if self.sync_rounds < self.window:
            raise ConfigError(f"--sync-rounds must be at least the window ({self.window})", option="sync_rounds")
        if self.window < 1:
            raise ConfigError("the window must be >= 1", option="window")

    def run_config(self, ledger: Path) -> RunConfig:
        return RunConfig(
            dataset=self.dataset,
            clients=self.clients,
            rounds=self.sync_rounds,
            per_round=self.buffer,
            model=self.model,
            local_epochs=self.local_epochs,
            lr=self.lr,
            server_lr=self.server_lr,
            server_momentum=self.server_momentum,
            secure_sum=self.secure_sum,
            graph="sparse",
            dp=self.dp,
            noise_multiplier=self.noise_multiplier if self.dp != "none" else None,
            clip=self.clip,
            delta=self.delta,
            client_max_epsilon=self.client_max_epsilon,
            seed=self.seed,
            ledger=str(ledger) if self.dp != "none" else None,
        )


def running_mean(values: list[float], window: int) -> list[float]:
    """The mean of the last ``window`` values at each position (fewer at the start)."""
    out = []
    for i in range(len(values)):
        lo = max(0, i - window + 1)
        chunk = values[lo : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def time_to_target(times: list[float], accuracies: list[float], target: float, window: int) -> float | None:
    """Simulated time of the first evaluation whose running mean reaches ``target`` (None: never)."""
    for t, a in zip(times, running_mean(accuracies, window), strict=True):
        if a >= target - 1e-12:
            return t
    return None


def _max_participation(events: list[Any]) -> int:
    counts: dict[int, int] = {}
    for e in events:
        for c in e.survivor_ids:
            counts[c] = counts.get(c, 0) + 1
    return max(counts.values(), default=0)


def run_async_bench(
    spec: AsyncBenchSpec, *, data: FederatedData | None = None, work_dir: Path | None = None, log: Any = None
) -> dict[str, Any]:
    """Run the synchronous then the asynchronous run; return the report (JSON-serialisable)."""
    say = log or (lambda msg: None)
    own_dir = work_dir is None
    wd = Path(tempfile.mkdtemp(prefix="privagg-bench-async-")) if work_dir is None else Path(work_dir)
    wd.mkdir(parents=True, exist_ok=True)
    try:
        sync_ledger, async_ledger = wd / "ledger-sync.jsonl", wd / "ledger-async.jsonl"
        for p in (sync_ledger, async_ledger):
            p.unlink(missing_ok=True)  # this benchmark's own output from an earlier invocation
        cfg = spec.run_config(sync_ledger)
        t_load = time.perf_counter()
        data = data if data is not None else load_federated_data(cfg)
        say(f"data loaded in {time.perf_counter() - t_load:.1f} s")

        # -- synchronous FedAvg under the clock
        t0 = time.perf_counter()
        fed, _, _ = build_federation(cfg, data)
        try:
            clock = SyncClock(spec.speed, spec.clients, fed.rng.spawn("async"),
                              exchanges=sync_exchanges_after_input(fed.secure_sum))
            sync_t, sync_acc = [], []
            for sr in clocked_rounds(fed, spec.sync_rounds, clock):
                sync_t.append(sr.sim_time_s)
                sync_acc.append(float(sr.round.metrics.get("accuracy", float("nan"))))
            sync_events = fed.events
        finally:
            fed.close()
        sync_wall = time.perf_counter() - t0
        m = _max_participation(sync_events)
        target = running_mean(sync_acc, spec.window)[-1]
        say(f"sync: {len(sync_t)} rounds, {sync_t[-1]:.0f} simulated s, final accuracy {target:.4f}, "
            f"max participation {m} ({sync_wall:.0f} s wall)")

        # -- asynchronous, same everything, capped at the synchronous maximum participation
        t0 = time.perf_counter()
        options = AsyncOptions(
            buffer=spec.buffer,
            concurrency=spec.concurrency,
            staleness=spec.staleness,
            max_contributions=max(m, 1),
            client_max_epsilon=spec.client_max_epsilon,
            speed=spec.speed,
            max_time_s=sync_t[-1],
        )
        acfg = cfg.replace(ledger=str(async_ledger) if spec.dp != "none" else None)
        afed, _, _ = build_async_federation(acfg, options, data)
        try:
            async_t, async_acc, stal = _run_async(afed)
            async_events = afed.fed.events
        finally:
            afed.fed.close()
        async_wall = time.perf_counter() - t0
        say(f"async: {len(async_t)} buffers, {async_t[-1] if async_t else 0:.0f} simulated s "
            f"({async_wall:.0f} s wall); stopped: {afed.stop_reason}")

        t_sync = time_to_target(sync_t, sync_acc, target, spec.window)
        t_async = time_to_target(async_t, async_acc, target, spec.window)
        eps_sync = _eps(sync_events, spec)
        eps_async = _eps(async_events, spec)
        # At the moment the asynchronous run reached the target (the comparison's point).
        at_target = (
            [e for e, t in zip(async_events, async_t, strict=True) if t_async is not None and t <= t_async]
            if spec.dp != "none"
            else []
        )
        report: dict[str, Any] = {
            "benchmark": "async-vs-sync time to accuracy (simulated clock)",
            "dataset": spec.dataset,
            "clients": spec.clients,
            "model": spec.model,
            "dp": spec.dp,
            "secure_sum": spec.secure_sum,
            "noise_multiplier": spec.noise_multiplier,
            "clip": spec.clip,
            "delta": spec.delta,
            "release_size": spec.buffer,
            "sync": {
                "cohort": spec.buffer,
                "rounds": len(sync_t),
                "simulated_time_s": sync_t[-1],
                "time_to_target_s": t_sync,
                "final_accuracy_window_mean": target,
                "max_participation": m,
                "epsilon_vs_server": eps_sync,
                "wall_s": round(sync_wall, 1),
            },
            "async": {
                "buffer": spec.buffer,
                "concurrency": spec.concurrency,
                "staleness_weighting": spec.staleness.describe(),
                "max_contributions": options.max_contributions,
                "buffers": len(async_t),
                "simulated_time_s": async_t[-1] if async_t else 0.0,
                "time_to_target_s": t_async,
                "staleness_mean": (sum(stal) / len(stal)) if stal else None,
                "staleness_max": max(stal) if stal else None,
                "max_participation": _max_participation(async_events),
                "epsilon_vs_server": eps_async,
                "epsilon_vs_server_at_target": _eps(at_target, spec) if at_target else None,
                "stopped": afed.stop_reason,
                "stats": afed.stats.to_dict(),
                "wall_s": round(async_wall, 1),
            },
            "target_accuracy": target,
            "window": spec.window,
            "speedup_time_to_accuracy": (t_sync / t_async) if (t_sync is not None and t_async) else None,
            "epsilon_vs_server_sync": eps_sync,
            "epsilon_vs_server_async": eps_async,
            "speed_distribution": spec.speed.describe(),
            "seed": spec.seed,
            "curves": {
                "sync": {"time_s": sync_t, "accuracy": sync_acc},
                "async": {"time_s": async_t, "accuracy": async_acc},
            },
        }
        return report
    finally:
        if own_dir:
            shutil.rmtree(wd, ignore_errors=True)


def _run_async(afed: AsyncFederation) -> tuple[list[float], list[float], list[int]]:
    times: list[float] = []
    accs: list[float] = []
    stal: list[int] = []
    for b in afed.buffers(10**9):
        times.append(b.sim_time_s)
        accs.append(float(b.metrics.get("accuracy", float("nan"))))
        stal.extend(b.staleness)
    return times, accs, stal


def _eps(events: list[Any], spec: AsyncBenchSpec) -> float | None:
    if spec.dp == "none":
        return None
    e = epsilon_vs_server(events, spec.delta)
    return None if math.isinf(e) else e


def per_client_epsilons(events: list[Any], delta: float) -> dict[int, float]:
    """Each client's epsilon against the server (for reports)."""
    return epsilon_vs_server_per_client(events, delta)


def plot_curves(report: dict[str, Any], path: Path) -> None:
    """Accuracy against simulated time for both runs, with the target and the two times to it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = int(report["window"])
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=120)
    colours = {"sync": "tab:blue", "async": "tab:orange"}
    labels = {
        "sync": f"synchronous FedAvg (cohort {report['sync']['cohort']})",
        "async": f"buffered async (K={report['async']['buffer']}, C={report['async']['concurrency']})",
    }
    for mode in ("sync", "async"):
        c = report["curves"][mode]
        t = [x / 60.0 for x in c["time_s"]]
        ax.plot(t, c["accuracy"], color=colours[mode], alpha=0.25, linewidth=0.8)
        ax.plot(t, running_mean(c["accuracy"], w), color=colours[mode], linewidth=1.8, label=labels[mode])
        ttt = report[mode]["time_to_target_s"]
        if ttt is not None:
            ax.axvline(ttt / 60.0, color=colours[mode], linestyle=":", linewidth=1.0)
    ax.axhline(report["target_accuracy"], color="grey", linestyle="--", linewidth=0.8,
               label=f"target {report['target_accuracy']:.3f} (sync final, mean of {w})")
    sp = report["speedup_time_to_accuracy"]
    es, ea = report["epsilon_vs_server_sync"], report["epsilon_vs_server_async"]
    d = report["speed_distribution"]
    title = (
        f"{report['dataset']}, {report['clients']} clients, {report['model']}, "
        f"{report['dp']} DP z={report['noise_multiplier']:g}"
    )
    if sp is not None:
        title += f"\nspeedup to target {sp:.2f}x"
    if es is not None and ea is not None:
        title += f"; eps vs server {es:.2f} (sync) / {ea:.2f} (async)"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(f"simulated time (min); client times log-normal, median {d.get('median_s', 0):g} s, "
                  f"sigma {d.get('sigma', 0):g}", fontsize=8)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
