"""Everything a sweep writes: the summary table, CSV and JSON of every run, PNG plots and the Markdown report.

Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["summarize", "write_outputs", "record_table", "results_table", "ROUND_FIELDS", "RUN_FIELDS"]

RUN_FIELDS = (
    "cell_id",
    "model",
    "mode",
    "target_epsilon",
    "epsilon",
    "epsilon_vs_server",
    "epsilon_vs_public",
    "epsilon_enforced_on",
    "predicted_epsilon",
    "seed",
    "accuracy",
    "loss",
    "noise_multiplier",
    "clip",
    "server_lr",
    "server_momentum",
    "secure_sum",
    "rounds",
    "clients",
    "sampling_rate",
    "delta",
    "bytes_up_per_client_per_round",
    "wall_s_per_round",
    "cpu_s_per_round",
    "wall_s",
    "split",
    "status",
    "privacy_unit",
    "record_clip",
    "epsilon_median",
    "clients_trained",
    "k_calibrated",
    "k_star",
    "max_steps",
)
ROUND_FIELDS = (
    "cell_id",
    "model",
    "mode",
    "target_epsilon",
    "seed",
    "round",
    "accuracy",
    "loss",
    "epsilon",
    "cohort",
    "survivors",
    "bytes_up_per_client",
    "bytes_down_per_client",
    "clipped_fraction",
    "wall_s",
    "cpu_s",
)


def _mean(xs: Sequence[float]) -> float:
    return float(statistics.fmean(xs)) if xs else math.nan


def _std(xs: Sequence[float]) -> float:
    return float(statistics.stdev(xs)) if len(xs) > 1 else 0.0


def run_row(rec: dict[str, Any]) -> dict[str, Any]:
    """One flat row per run (the CSV line).

    Record-mode rows: ``noise_multiplier`` is DP-SGD's (per record), ``epsilon`` the largest
    record-level epsilon of any client, ``clip`` the client-update clip (encoding only).
    """
    cfg = rec.get("config", {})
    rounds = [r for r in rec.get("rounds", []) if not r.get("skipped")]
    cal = rec.get("calibration", {})
    record = rec["mode"] == "record"
    level = rec.get("record_level", {})
    details = cal.get("details", {})
    return {
        "cell_id": rec["cell_id"],
        "model": rec["model"],
        "mode": rec["mode"],
        "target_epsilon": rec.get("target_epsilon"),
        "epsilon": rec.get("epsilon"),
        "epsilon_vs_server": rec.get("epsilon_vs_server"),
        "epsilon_vs_public": rec.get("epsilon_vs_public"),
        "epsilon_enforced_on": rec.get("epsilon_enforced_on"),
        "predicted_epsilon": cal.get("predicted_epsilon"),
        "seed": rec.get("seed"),
        "accuracy": rec.get("accuracy"),
        "loss": rec.get("loss"),
        "noise_multiplier": cfg.get("record_noise_multiplier") if record else cfg.get("noise_multiplier"),
        "clip": cfg.get("clip"),
        "server_lr": cfg.get("server_lr"),
        "server_momentum": cfg.get("server_momentum"),
        "secure_sum": cfg.get("secure_sum"),
        "rounds": cfg.get("rounds"),
        "clients": cfg.get("clients"),
        "sampling_rate": cfg.get("sampling_rate"),
        "delta": cfg.get("delta") if rec["mode"] != "none" else None,
        "bytes_up_per_client_per_round": _mean([r["bytes_up_per_client"] for r in rounds]) if rounds else None,
        "wall_s_per_round": _mean([r["wall_s"] for r in rounds]) if rounds else None,
        "cpu_s_per_round": _mean([r["cpu_s"] for r in rounds]) if rounds else None,
        "wall_s": rec.get("wall_s"),
        "split": rec.get("split"),
        "status": rec.get("status"),
        "privacy_unit": None if rec["mode"] == "none" else ("record" if record else "client"),
        "record_clip": cfg.get("record_clip") if record else None,
        "epsilon_median": level.get("epsilon_median"),
        "clients_trained": level.get("clients_trained"),
        "k_calibrated": details.get("k_calibrated"),
        "k_star": details.get("k_star"),
        "max_steps": details.get("max_steps"),
    }


def eval_size(rec: dict[str, Any]) -> int:
    """How many held-out examples a run was evaluated on (0 if unknown)."""
    if isinstance(rec.get("n_eval"), int):
        return int(rec["n_eval"])
    m = re.search(r"\((\d+) examples\)", str(rec.get("evaluated_on", "")))
    return int(m.group(1)) if m else 0


def monotone_tolerance(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Two standard errors of the difference of two mean accuracies.

    The standard error of each mean combines the spread over seeds (std / sqrt(seeds))
    and the binomial error of one evaluation (sqrt(p (1 - p) / n) / sqrt(seeds)); with
    one seed and an unknown evaluation size it falls back to one point.
    """

    def var(r: dict[str, Any]) -> float:
        k = max(1, int(r["seeds"]))
        p = float(r["accuracy"])
        v = (float(r["accuracy_std"]) ** 2) / k
        n = int(r.get("n_eval") or 0)
        if n > 0:
            v = max(v, p * (1 - p) / n / k)
        return v

    if not (a.get("n_eval") or b.get("n_eval")) and min(a["seeds"], b["seeds"]) <= 1:
        return 0.01
    return 2 * math.sqrt(var(a) + var(b))


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Group runs over seeds: baselines per model, one result per (model, mode, target epsilon).

    Monotonicity: within each (model, mode), consecutive epsilons must not lose more
    accuracy than noise explains (see :func:`monotone_tolerance`).
    """
    ok = [r for r in records if r.get("status") == "ok"]
    base: dict[str, list[float]] = defaultdict(list)
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in ok:
        if r["mode"] == "none":
            base[r["model"]].append(float(r["accuracy"]))
        else:
            groups[(r["model"], r["mode"], float(r["target_epsilon"]))].append(r)
    baselines = {m: {"accuracy": _mean(v), "accuracy_std": _std(v), "seeds": len(v)} for m, v in base.items()}
    results = []
    for (model, mode, teps), rs in sorted(groups.items()):
        accs = [float(r["accuracy"]) for r in rs]
        epss = [float(r["epsilon"]) for r in rs if r.get("epsilon") is not None]
        servers = [float(r["epsilon_vs_server"]) for r in rs if r.get("epsilon_vs_server") is not None]
        publics = [float(r["epsilon_vs_public"]) for r in rs if r.get("epsilon_vs_public") is not None]
        row = run_row(rs[0])
        b = baselines.get(model, {}).get("accuracy")
        results.append(
            {
                "model": model,
                "mode": mode,
                "target_epsilon": teps,
                "epsilon": max(epss) if epss else None,
                "epsilon_mean": _mean(epss) if epss else None,
                "epsilon_vs_server": max(servers) if servers else None,
                "epsilon_vs_public": max(publics) if publics else None,
                "epsilon_enforced_on": rs[0].get("epsilon_enforced_on"),
                "accuracy": _mean(accs),
                "accuracy_std": _std(accs),
                "seeds": len(accs),
                "noise_multiplier": row["noise_multiplier"],
                "clip": row["clip"],
                "server_lr": row["server_lr"],
                "server_momentum": row["server_momentum"],
                "secure_sum": row["secure_sum"],
                "rounds": row["rounds"],
                "gap_to_baseline": (b - _mean(accs)) if b is not None else None,
                "n_eval": min(eval_size(r) for r in rs),
                "privacy_unit": row["privacy_unit"],
            }
        )
        if mode == "record":
            rows = [run_row(r) for r in rs]
            meds = [float(x["epsilon_median"]) for x in rows if x["epsilon_median"] is not None]
            results[-1].update(
                {
                    # Calibrated per seed (each seed has its own cohort schedule): the largest.
                    "noise_multiplier": max(float(x["noise_multiplier"]) for x in rows),
                    "record_clip": row["record_clip"],
                    "epsilon_median": _mean(meds) if meds else None,
                    "clients_trained": min(
                        (int(x["clients_trained"]) for x in rows if x["clients_trained"]), default=None
                    ),
                    "k_calibrated": max((int(x["k_calibrated"]) for x in rows if x["k_calibrated"]), default=None),
                    "k_star": row["k_star"],
                    "max_steps": max((int(x["max_steps"]) for x in rows if x["max_steps"]), default=None),
                    "accountant": rs[0].get("calibration", {}).get("accountant"),
                }
            )
    monotone: dict[str, bool] = {}
    by_curve: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for res in results:
        by_curve[(res["model"], res["mode"])].append(res)
    for (model, mode), rs in by_curve.items():
        rs = sorted(rs, key=lambda x: x["target_epsilon"])
        good = True
        for a, b2 in zip(rs, rs[1:], strict=False):
            if b2["accuracy"] < a["accuracy"] - monotone_tolerance(a, b2):
                good = False
        monotone[f"{model}/{mode}"] = good
    return {"baselines": baselines, "results": results, "monotone": monotone}


def _write_csv(path: Path, fields: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields})


def _round_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for rec in records:
        if rec.get("status") != "ok":
            continue
        for r in rec["rounds"]:
            out.append(
                {
                    "cell_id": rec["cell_id"],
                    "model": rec["model"],
                    "mode": rec["mode"],
                    "target_epsilon": rec.get("target_epsilon"),
                    "seed": rec.get("seed"),
                    **r,
                }
            )
    return out


# -- plots -------------------------------------------------------------------------

_MODE_STYLE = {
    "distributed": ("o", "-"),
    "central": ("s", "--"),
    "local": ("^", ":"),
    "record": ("D", "-."),
    "none": ("", "-"),
}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_vs_epsilon(summary: dict[str, Any], path: Path, *, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    models = sorted({r["model"] for r in summary["results"]} | set(summary["baselines"]))
    colors = {m: f"C{i}" for i, m in enumerate(models)}
    curves: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in summary["results"]:
        curves[(r["model"], r["mode"])].append(r)
    all_eps: list[float] = []
    for (model, mode), rs in sorted(curves.items()):
        rs = sorted(rs, key=lambda x: x["target_epsilon"])
        xs = [r["epsilon_mean"] if r["epsilon_mean"] is not None else r["target_epsilon"] for r in rs]
        ys = [100 * r["accuracy"] for r in rs]
        es = [100 * r["accuracy_std"] for r in rs]
        all_eps += xs
        marker, ls = _MODE_STYLE.get(mode, ("o", "-"))
        if mode not in ("record", "central") and all(r.get("epsilon_vs_public") is not None for r in rs):
            # Client-level distributed / local: the same runs at epsilon against model users (filled)
            # and against the server (hollow); central mode has no finite epsilon against the server.
            pub = [float(r["epsilon_vs_public"]) for r in rs]
            ax.errorbar(pub, ys, yerr=es, marker=marker, linestyle=ls, color=colors[model], capsize=3,
                        label=f"{model}, {mode}: ε vs model users")
            all_eps += pub
            if all(r.get("epsilon_vs_server") is not None for r in rs):
                srv = [float(r["epsilon_vs_server"]) for r in rs]
                ax.errorbar(srv, ys, yerr=es, marker=marker, linestyle=":", color=colors[model], capsize=3,
                            markerfacecolor="none", label=f"{model}, {mode}: ε vs server")
                all_eps += srv
            continue
        label = f"{model}, {mode}" + (" (record-level ε)" if mode == "record" else "")
        ax.errorbar(xs, ys, yerr=es, marker=marker, linestyle=ls, color=colors[model], capsize=3, label=label)
    for model, b in sorted(summary["baselines"].items()):
        ax.axhline(
            100 * b["accuracy"],
            color=colors[model],
            linestyle=(0, (1, 1)),
            linewidth=1.2,
            label=f"{model}, non-private",
        )
    ax.set_xscale("log")
    if all_eps:
        ticks = sorted({round(t, 2) for t in (r["target_epsilon"] for r in summary["results"])})
        powers = [2.0**k for k in range(-3, 8) if min(all_eps) / 1.3 <= 2.0**k <= max(all_eps) * 1.3]
        ticks = sorted(set(ticks) | set(powers))
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlim(min(all_eps) / 1.3, max(all_eps) * 1.3)
    record = any(r["mode"] == "record" for r in summary["results"])
    ax.set_xlabel("accounted ε, log scale (filled: vs model users; hollow: vs server)"
                  + ("\nrecord mode: per record, max over clients" if record else ""), fontsize=9)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_rounds(records: Sequence[dict[str, Any]], path: Path, *, title: str) -> None:
    """Accuracy vs round and cumulative epsilon vs round (seed 0), one row per model."""
    plt = _plt()
    ok = [r for r in records if r.get("status") == "ok" and r.get("seed") == 0]
    models = sorted({r["model"] for r in ok})
    if not models:
        return
    eps_values = sorted({float(r["target_epsilon"]) for r in ok if r.get("target_epsilon") is not None})
    cmap = plt.get_cmap("viridis")
    ecol = {e: cmap(i / max(1, len(eps_values) - 1) * 0.85) for i, e in enumerate(eps_values)}
    fig, axes = plt.subplots(len(models), 2, figsize=(10, 3.6 * len(models)), dpi=110, squeeze=False)
    for row, model in enumerate(models):
        ax_acc, ax_eps = axes[row]
        for r in sorted(ok, key=lambda x: (x["mode"], x.get("target_epsilon") or 0)):
            if r["model"] != model:
                continue
            xs = [p["round"] for p in r["rounds"]]
            acc = [100 * p["accuracy"] if p["accuracy"] is not None else math.nan for p in r["rounds"]]
            if r["mode"] == "none":
                ax_acc.plot(xs, acc, color="black", linewidth=1.5, label="non-private")
                continue
            e = float(r["target_epsilon"])
            _m, ls = _MODE_STYLE.get(r["mode"], ("o", "-"))
            lab = f"{r['mode']} ε={e:g}"
            ax_acc.plot(xs, acc, color=ecol[e], linestyle=ls, linewidth=1.2, label=lab)
            eps = [p["epsilon"] if p["epsilon"] is not None else math.nan for p in r["rounds"]]
            ax_eps.plot(xs, eps, color=ecol[e], linestyle=ls, linewidth=1.2, label=lab)
        from matplotlib.ticker import MaxNLocator

        for ax in (ax_acc, ax_eps):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_acc.set_title(f"{model}: test accuracy per round", fontsize=10)
        ax_acc.set_xlabel("round")
        ax_acc.set_ylabel("accuracy (%)")
        ax_acc.grid(True, alpha=0.3)
        ax_acc.legend(fontsize=7, ncol=2, loc="best")
        ax_eps.set_title(f"{model}: cumulative ε per round", fontsize=10)
        ax_eps.set_xlabel("round")
        ax_eps.set_ylabel("ε (accounted)")
        ax_eps.grid(True, alpha=0.3)
        ax_eps.legend(fontsize=7, ncol=2, loc="upper left")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_cost(records: Sequence[dict[str, Any]], path: Path, *, title: str) -> None:
    """Mean upload bytes per client per round and mean wall time per round, by secure sum and mode."""
    plt = _plt()
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        if rec.get("status") != "ok":
            continue
        row = run_row(rec)
        groups[
            f"{row['secure_sum']}\n({rec['mode'] if rec['mode'] != 'none' else 'non-private'}, {rec['model']})"
        ].append(row)
    if not groups:
        return
    labels = sorted(groups, key=lambda k: (k.split(", ")[-1], k))  # grouped by model
    kb = [_mean([g["bytes_up_per_client_per_round"] for g in groups[k]]) / 1024 for k in labels]
    wall = [_mean([g["wall_s_per_round"] for g in groups[k]]) for k in labels]
    cpu = [_mean([g["cpu_s_per_round"] for g in groups[k]]) for k in labels]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(labels) * 2), 4), dpi=110)
    xs = list(range(len(labels)))
    colors = ["C0" if lab.startswith("plain") else "C1" if lab.startswith("masking") else "C2" for lab in labels]
    a1.bar(xs, kb, color=colors)
    a1.set_xticks(xs)
    a1.set_xticklabels(labels, fontsize=7)
    a1.set_ylabel("KiB uploaded per client per round")
    a1.set_title("communication", fontsize=10)
    w = 0.4
    a2.bar([x - w / 2 for x in xs], wall, width=w, color=colors, label="wall")
    a2.bar([x + w / 2 for x in xs], cpu, width=w, color=colors, alpha=0.45, hatch="//", label="CPU (worker)")
    a2.set_xticks(xs)
    a2.set_xticklabels(labels, fontsize=7)
    a2.set_ylabel("seconds per round (incl. evaluation)")
    a2.set_title("time", fontsize=10)
    a2.legend(fontsize=8)
    for ax in (a1, a2):
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- report ------------------------------------------------------------------------


def _fmt(x: Any, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def results_table(summary: dict[str, Any]) -> str:
    """The Markdown table of results (also used in the README section)."""
    lines = [
        "| model | mode | target ε (against) | ε vs server | ε vs model users | noise mult. | clip | server lr / mom. "
        "| accuracy (%) | non-private (%) | gap (pts) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["results"]:
        b = summary["baselines"].get(r["model"], {})
        gap = 100 * r["gap_to_baseline"] if r["gap_to_baseline"] is not None else None
        acc = f"{100 * r['accuracy']:.1f}" + (f" ± {100 * r['accuracy_std']:.1f}" if r["seeds"] > 1 else "")
        clip = _fmt(r["clip"])
        if r["mode"] == "record":  # DP-SGD's per-record clip; the update clip only bounds the encoding
            clip = f"{_fmt(r.get('record_clip'))} per record"
        against = {"server": "server", "public": "model users"}.get(str(r.get("epsilon_enforced_on")), "")
        target = f"{r['target_epsilon']:g}" + (f" ({against})" if against else "")
        if r["mode"] == "record":  # record-level: DP-SGD inside each client holds against everyone
            server = public = _fmt(r["epsilon"])
        else:
            server = "unbounded" if r["mode"] == "central" else _fmt(r.get("epsilon_vs_server"))
            public = _fmt(r.get("epsilon_vs_public"))
        lines.append(
            f"| {r['model']} | {r['mode']} | {target} | {server} | {public} | "
            f"{_fmt(r['noise_multiplier'], 3)} | {clip} | {r['server_lr']:g} / {r['server_momentum']:g} | "
            f"{acc} | {_fmt(100 * b['accuracy'] if b else None, 1)} | {_fmt(gap, 1)} |"
        )
    return "\n".join(lines)


def record_table(summary: dict[str, Any]) -> str:
    """The Markdown table of the record-mode results (privacy unit: one record of one client)."""
    lines = [
        "| model | target ε | ε max over clients | ε median | clients trained | noise mult. | record clip "
        "| max DP-SGD steps | k calibrated | k* (union bound) | accuracy (%) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["results"]:
        if r["mode"] != "record":
            continue
        acc = f"{100 * r['accuracy']:.1f}" + (f" ± {100 * r['accuracy_std']:.1f}" if r["seeds"] > 1 else "")
        lines.append(
            f"| {r['model']} | {r['target_epsilon']:g} | {_fmt(r['epsilon'])} | {_fmt(r.get('epsilon_median'))} | "
            f"{_fmt(r.get('clients_trained'))} | {_fmt(r['noise_multiplier'], 3)} | {_fmt(r.get('record_clip'))} | "
            f"{_fmt(r.get('max_steps'))} | {_fmt(r.get('k_calibrated'))} | {_fmt(r.get('k_star'))} | {acc} |"
        )
    return "\n".join(lines)


def write_report(path: Path, meta: dict[str, Any], summary: dict[str, Any], runs: Sequence[dict[str, Any]]) -> None:
    spec = meta["spec"]
    acct = meta.get("accountant_version", spec["accountant"])
    seeds = spec["seeds"]
    mono = summary["monotone"]
    failed = [r for r in runs if r.get("status") == "error"]
    pending = [r for r in runs if r.get("status") == "pending"]
    modes_sum = ", ".join(f"{m}: {'plain' if m == 'local' else spec['secure_sum']}" for m in spec["modes"])
    client_modes = [m for m in spec["modes"] if m != "record"]
    record_runs = [r for r in runs if r.get("mode") == "record" and r.get("calibration", {}).get("details")]
    unit = "one client's whole contribution (client-level DP, add/remove one client)"
    if record_runs:
        unit = (
            (f"{', '.join(client_modes)}: {unit}; " if client_modes else "")
            + "record: one record (training example) of one client (record-level DP, add/remove one record), "
            "not a whole client"
        )
    adaptive = any(r.get("config", {}).get("adaptive_clip") for r in runs)
    clip_note = (
        "adaptive (median-tracking, Andrew et al. 2021; its count query is accounted), initial clip in the table"
        if adaptive
        else "fixed L2 clip of each client's whole update (value in the table)"
    )
    settings = [
        ("dataset", f"{spec['dataset']} ({spec['partition']} split over clients)"),
        ("privacy unit", unit),
        (
            "sampling scheme",
            f"Poisson, q = {spec['per_round']}/{spec['clients']} = {spec['sampling_rate']:g} per round",
        ),
        ("clients", str(spec["clients"])),
        ("rounds", ", ".join(f"{m}: {n}" for m, n in meta["rounds"].items())),
        ("accountant", f"{spec['accountant']} — {acct}"),
        ("δ", f"{spec['delta']:g}"),
        (
            "noise",
            f"calibrated per target ε against {'the server' if spec.get('against') == 'server' else 'model users'} "
            "(central mode: always model users) by bisection on the round loop's own accountant (see the table: "
            "noise multiplier = σ / clip); both ε are reported: against the server (per client, no "
            "amplification; unbounded in central mode) and against model users (amplified by sampling)",
        ),
        ("clip", clip_note),
        ("secure sum", f"{modes_sum}; non-private baseline: plain"),
        (
            "distributed noise",
            "Skellam shares inside the ring; the noise multiplier in the table is that of the planned minimum "
            "survivors, each round is charged with the noise of the clients that actually survived",
        ),
        (
            "non-private baseline",
            "same data split, model, rounds, client training and server optimizer; updates clipped at the same "
            "clip (the encoding needs a bound), no noise",
        ),
        (
            "client training",
            "; ".join(
                f"{m}: SGD lr {o['lr']:g}, {o['local_epochs']} local epochs, batch {o['batch_size']}"
                for m, o in meta["client_training"].items()
            ),
        ),
        ("hyperparameters", meta["tuning_note"]),
        ("evaluation", f"{spec['split']} half of the held-out set (fixed permutation), final round"),
        ("seeds", f"{seeds} per cell (0..{seeds - 1}); ± is the std over seeds"),
    ]
    if record_runs:
        settings += _record_settings(record_runs, spec)
    parts = [
        f"# Privacy-utility sweep: {spec['dataset']}",
        "",
        f"Command: `{meta['command']}`",
        "",
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in settings],
        "",
        "## Results",
        "",
        results_table(summary),
        "",
        "Non-private baselines: "
        + ", ".join(f"{m} {100 * b['accuracy']:.1f}%" for m, b in sorted(summary["baselines"].items()))
        + ".",
        "",
        "Accuracy monotone in ε within noise "
        f"({seeds} seed{'s' if seeds > 1 else ''}; tolerance: 2 standard errors of the difference, from the "
        "spread over seeds and the binomial error of the evaluation set): "
        + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in sorted(mono.items()))
        + ".",
        "",
        *(
            [
                "## Record mode (record-level DP)",
                "",
                "ε is measured: the largest record-level ε that any client's Opacus accountant holds at the end of "
                "the run (the median over the clients that trained beside it). It is not comparable unit for unit "
                "with the client-level ε of the other modes: it protects one record of one client, not a client.",
                "",
                record_table(summary),
                "",
            ]
            if record_runs
            else []
        ),
        "![accuracy vs epsilon](accuracy_vs_epsilon.png)",
        "",
        "![accuracy and epsilon per round](rounds.png)",
        "",
        "![bytes and time per round](cost.png)",
        "",
        "## Run",
        "",
        f"- cells: {meta['counts']['total']} ({meta['counts']['ran']} run now, "
        f"{meta['counts']['resumed']} resumed from earlier invocations)",
        f"- wall time of this invocation: {meta['wall_s']:.0f} s with {meta['workers']} worker process(es), "
        "one torch thread each",
        f"- machine: {meta['machine']}",
        f"- load average (1 min) at start / end: {meta['load_start']} / {meta['load_end']}",
    ]
    if failed:
        parts += ["", "## Failed cells", ""] + [f"- {r['label']}: {r.get('error')}" for r in failed]
    if pending:
        parts += ["", "## Cells not run yet (rerun the command to run them)", ""]
        parts += [f"- {r['label']}" for r in pending]
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")


def _record_settings(record_runs: Sequence[dict[str, Any]], spec: dict[str, Any]) -> list[tuple[str, str]]:
    """The report's settings rows for record mode (from the record cells' calibrations)."""
    d = record_runs[0]["calibration"]["details"]
    cfg = record_runs[0]["config"]
    steps = ", ".join(
        f"{s['steps']} at sample rate {s['sample_rate']:.4g}" for s in d.get("steps_per_participation", [])
    )
    k_seed = sorted({(r["seed"], r["calibration"]["details"].get("k_calibrated")) for r in record_runs})
    rule = d.get("participation_rule")
    if rule == "exact":
        k_note = (
            "calibrated for each seed's exact maximum participation count, computed before the run from the "
            "seeded cohort schedule (" + ", ".join(f"seed {s}: {k}" for s, k in k_seed) + ")"
        )
    else:
        k_note = "calibrated for k* (below)"
    version = f"Opacus {d.get('opacus_version')} {str(d.get('mechanism', '')).upper()} accountant"
    return [
        (
            "record mode",
            f"DP-SGD inside each client (Opacus make_private in the client's train_fn, Poisson sampling of "
            f"records), no client-level noise, secure sum {cfg.get('secure_sum')}; client updates are clipped at "
            f"{cfg.get('clip'):g} only so the secure sum can encode them; Opacus runs without secure_mode "
            "(torch generators, not a CSPRNG: see fl_core.record_dp)",
        ),
        ("record accountant", f"{version}, one per client across the rounds it takes part in; δ = {spec['delta']:g}"),
        (
            "record clip / noise",
            f"per-record gradient clip {cfg.get('record_clip'):g}; noise multiplier σ / clip per target ε in the "
            "record table, calibrated by bisection on the same accountant for the worst client",
        ),
        (
            "record steps",
            f"per participation: {d.get('local_epochs')} local epochs x ceil(records / {d.get('batch_size')}) "
            f"Poisson batches ({steps}); total steps = that x participations (max in the record table)",
        ),
        (
            "record participations",
            f"{k_note}; k* = {d.get('k_star')}: by a union bound over the {spec['clients']} clients, the chance "
            f"that any client takes part in more than k* of the rounds is at most {d.get('fail_prob'):g} "
            "(used when the schedule is not seeded); client sampling is not credited as amplification",
        ),
    ]


def write_outputs(out: Path, meta: dict[str, Any], records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Write runs.csv, rounds.csv, results.json, the three PNGs and report.md; return the summary."""
    summary = summarize(records)
    _write_csv(out / "runs.csv", RUN_FIELDS, [run_row(r) for r in records])
    _write_csv(out / "rounds.csv", ROUND_FIELDS, _round_rows(records))
    sp = meta["spec"]
    title = f"{sp['dataset']}: {sp['clients']} clients, q = {sp['sampling_rate']:g}, δ = {sp['delta']:g}"
    plot_accuracy_vs_epsilon(summary, out / "accuracy_vs_epsilon.png", title=title)
    plot_rounds(records, out / "rounds.png", title=title + " (seed 0)")
    plot_cost(records, out / "cost.png", title=title)
    doc = {**meta, **summary, "runs": list(records)}
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    write_report(out / "report.md", meta, summary, records)
    return summary
