"""``privagg run --mode async`` and ``privagg bench async`` as a user calls them."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fl_core.asynchronous import SpeedModel
from fl_core.asynchronous.command import options_from_config
from fl_core.asynchronous.speeds import parse_speed
from fl_core.cli import app
from fl_core.config import RunConfig
from fl_core.errors import ConfigError

runner = CliRunner()


def _json_tail(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_run_mode_async_json_contract(tmp_path):
    res = runner.invoke(
        app,
        ["run", "--mode", "async", "--buffer", "5", "--concurrency", "10", "--rounds", "3", "--clients", "40",
         "--seed", "1", "--graph", "complete", "--ledger", str(tmp_path / "l.jsonl"), "--json"],
    )
    assert res.exit_code == 0, res.output
    out = _json_tail(res.output)
    assert out["mode"] == "async" and out["rounds"] == 3 and out["buffer"] == 5 and out["concurrency"] == 10
    assert out["simulated_time_s"] > 0 and out["epsilon_vs_server"] > 0
    assert out["async_stats"]["applied_updates"] == 15
    # The ledger audits: one round per buffer, epsilon recomputed from the records alone agrees.
    audit = runner.invoke(app, ["audit", str(tmp_path / "l.jsonl"), "--json"])
    assert audit.exit_code == 0, audit.output
    rep = _json_tail(audit.output)
    assert rep["ok"] and rep["verified"] and rep["rounds"] == 3 and not rep["disagreements"]
    assert rep["meta"]["schedule"] == "async" and rep["meta"]["buffer"] == 5


def _async_run(tmp_path, *extra):
    ledger = tmp_path / "l.jsonl"
    res = runner.invoke(
        app,
        ["run", "--mode", "async", "--buffer", "5", "--concurrency", "10", "--rounds", "6", "--clients", "20",
         "--seed", "2", "--graph", "complete", "--noise-multiplier", "3", "--ledger", str(ledger), *extra, "--json"],
    )
    assert res.exit_code == 0, res.output
    return _json_tail(res.output), ledger


def test_async_json_epsilon_is_the_enforced_one_per_client_against_the_server(tmp_path):
    """``epsilon`` is the budget's adversary's: against the server, the largest over clients of the
    buffers each one joined (no amplification), never the composition of every buffer in the ledger."""
    from dp.accountants import compute_epsilon
    from dp.adversary import server_view
    from dp.ledger import verify_ledger

    out, ledger = _async_run(tmp_path)
    events = verify_ledger(ledger).events
    assert len(events) == 6
    # Slow reference: each client's own buffers, each charged as the server sees it (q = 1), composed.
    per_client = {
        c: compute_epsilon([server_view(e) for e in events if c in e.survivor_ids], 1e-5)
        for c in {c for e in events for c in e.survivor_ids}
    }
    assert out["epsilon_enforced_on"] == "server"
    assert out["epsilon"] == out["epsilon_vs_server"] == pytest.approx(max(per_client.values()), rel=1e-6)
    assert out["epsilon_vs_public"] <= out["epsilon_vs_server"]
    # The ledger's composition over all six buffers is larger: no client joined every buffer.
    assert out["contributions_max"] < 6
    assert compute_epsilon([server_view(e) for e in events], 1e-5) > out["epsilon"] * 1.05
    assert "epsilon_vs_server_reason" not in out
    # The clients' own records (each one's buffers, at its own floor) agree with the server's books.
    assert out["clients_charged"] == len(per_client) and out["client_max_epsilon"] == 10.0
    assert out["client_epsilon_max"] >= out["epsilon_vs_server"] - 1e-9 and out["client_refusals"] == 0


def test_async_json_epsilon_follows_budget_against_and_central_mode(tmp_path):
    public, _ = _async_run(tmp_path, "--budget-against", "public")
    assert public["epsilon_enforced_on"] == "public" and public["epsilon"] == public["epsilon_vs_public"]
    central, _ = _async_run(tmp_path / "c", "--dp", "central")
    assert central["epsilon_enforced_on"] == "public" and central["epsilon"] == central["epsilon_vs_public"] > 0
    assert central["epsilon_vs_server"] is None and "central mode" in central["epsilon_vs_server_reason"]


def test_a_synchronous_run_reports_simulated_time_too(tmp_path):
    from fl_core.asynchronous.command import sync_simulated_time
    from fl_core.runner import execute

    trace = tmp_path / "trace.txt"
    trace.write_text("\n".join(str(float(i)) for i in range(1, 11)))  # client i takes i seconds
    args = ["--dp", "none", "--secure-sum", "plain", "--rounds", "2", "--clients", "10", "--per-round", "5",
            "--seed", "1", "--speed", f"trace:{trace}"]
    res = runner.invoke(app, ["run", *args, "--json"])
    assert res.exit_code == 0, res.output
    out = _json_tail(res.output)
    cfg = RunConfig(dp="none", secure_sum="plain", rounds=2, clients=10, per_round=5, seed=1, speed=f"trace:{trace}")
    summary = execute(cfg)
    # Each round lasts as long as its slowest member plus the plain sum's one exchange (0.5 s).
    expected = sum(max(r.cohort) + 0.5 for r in summary.results)
    assert sync_simulated_time(cfg, summary.results) == pytest.approx(expected)
    assert out["simulated_time_s"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--buffer", "30", "--concurrency", "20"], "can never fill with concurrency 20"),
        (["--max-staleness", "-1"], "--max-staleness must be an integer >= 0"),
        (["--buffer", "1", "--concurrency", "4"], "never one update alone"),
        (["--buffer", "50", "--concurrency", "50"], "exceeds the 40 clients"),
        (["--staleness", "linear"], "cannot read staleness"),
        (["--speed", "gamma:3"], "cannot read speed model"),
        (["--out", "somewhere"], "keeps no run folder"),
    ],
)
def test_impossible_async_settings_exit_2_before_anything_runs(tmp_path, args, message):
    ledger = tmp_path / "l.jsonl"
    res = runner.invoke(
        app, ["run", "--mode", "async", "--clients", "40", "--rounds", "2", "--noise-multiplier", "1",
              "--ledger", str(ledger), "--json", *args]
    )
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not ledger.exists()  # refused before any round: no ledger left behind


def test_options_from_config_defaults_and_bounds():
    o = options_from_config(RunConfig(clients=15))
    assert (o.buffer, o.concurrency) == (10, 15)
    o = options_from_config(RunConfig(clients=100, buffer=4, max_staleness=2, max_participation=3))
    assert (o.buffer, o.concurrency, o.max_staleness, o.max_contributions) == (4, 8, 2, 3)
    with pytest.raises(ConfigError):
        options_from_config(RunConfig(clients=100, buffer=4, concurrency=2))


def test_parse_speed(tmp_path):
    assert parse_speed("lognormal") == SpeedModel.lognormal()
    assert parse_speed("lognormal:5:1.5") == SpeedModel.lognormal(median_s=5.0, sigma=1.5)
    assert parse_speed("lognormal:5:1.5:0").jitter_sigma == 0.0
    t = tmp_path / "t.json"
    t.write_text("[1, 2.5, 4]")
    assert parse_speed(f"trace:{t}").trace_s == (1.0, 2.5, 4.0)
    t.write_text("1 x")
    for bad in ("lognormal:a", "lognormal:1:2:3:4", f"trace:{t}", f"trace:{tmp_path / 'none'}", "uniform"):
        with pytest.raises(ConfigError):
            parse_speed(bad)


def test_bench_async_json_contract_and_plot(tmp_path):
    res = runner.invoke(
        app,
        ["bench", "async", "--dataset", "digits", "--clients", "60", "--buffer", "6", "--concurrency", "12",
         "--sync-rounds", "8", "--noise-multiplier", "2", "--out", str(tmp_path), "--json"],
    )
    assert res.exit_code == 0, res.output
    out = _json_tail(res.output)
    for key in ("speedup_time_to_accuracy", "epsilon_vs_server_sync", "epsilon_vs_server_async", "target_accuracy",
                "speed_distribution", "curves"):
        assert key in out
    # Same release size, noise and participation cap: the asynchronous epsilon never exceeds the synchronous one.
    assert out["epsilon_vs_server_async"] <= out["epsilon_vs_server_sync"] + 1e-9
    assert out["async"]["max_participation"] <= out["sync"]["max_participation"]
    assert out["speed_distribution"]["kind"] == "lognormal" and out["speed_distribution"]["sigma"] == 1.25
    assert (tmp_path / "async-vs-sync.png").stat().st_size > 1000
    assert json.loads((tmp_path / "results.json").read_text())["target_accuracy"] == out["target_accuracy"]
    sp = out["speedup_time_to_accuracy"]
    if sp is not None:
        assert sp == pytest.approx(out["sync"]["time_to_target_s"] / out["async"]["time_to_target_s"])



def test_readme_async_example_runs():
    """The README's asynchronous example runs as written, with a model, train_fn and data the test defines."""
    import re
    from pathlib import Path

    from test_async_support import user_data, user_model, user_train_fn

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = text.index("## Asynchronous training")
    end = text.find("\n## ", start + 1)
    block = re.findall(r"```python\n(.*?)```", text[start:end], re.S)[0].replace("afed.buffers(30)", "afed.buffers(2)")
    printed = []
    env = {"model": user_model(), "train_fn": user_train_fn, "client_datasets": user_data(24),
           "print": lambda *a: printed.append(a)}
    exec(compile(block, "README.md", "exec"), env)
    assert [p[0] for p in printed] == [1, 2] and printed[1][1] > printed[0][1] > 0
