"""The demo's ServerApp: privagg's PrivAgg strategy (or Flower's FedAvg, with mode="fedavg", for comparison)."""

import json
from pathlib import Path
from typing import Any

import numpy as np
from flwr.serverapp import ServerApp

from fl_core.transport.flower import PrivAgg, parse_run_config
from fl_core.transport.flower.baseline import run_fedavg

app = ServerApp()


@app.main()
def main(grid: Any, context: Any) -> None:
    cfg, options = parse_run_config(dict(context.run_config))
    if options.mode == "fedavg":
        res = run_fedavg(grid, cfg, timeout=options.train_timeout)
        if options.output_dir:
            out = Path(options.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            np.save(out / "final.npy", res.pop("final"))
            (out / "summary.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
        return
    # None: the built-in demo task; output-dir gets final.npy, each round's sum and summary.json.
    PrivAgg(None, config=cfg, options=options).start(grid=grid)
