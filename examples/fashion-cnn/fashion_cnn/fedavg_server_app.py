"""The app's ServerApp: federated training from the CNN's initial weights, evaluated on the server's test set."""

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fashion_cnn import task

app = ServerApp()


def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    model = task.make_model()
    model.load_state_dict(arrays.to_torch_state_dict())
    return MetricRecord(task.evaluate(model))


@app.main()
def main(grid: Grid, context: Context) -> None:
    model = task.make_model()
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=int(context.run_config["num-server-rounds"]),
        evaluate_fn=evaluate_fn,
    )
    if context.run_config["final-model"]:
        torch.save(result.arrays.to_torch_state_dict(), str(context.run_config["final-model"]))
