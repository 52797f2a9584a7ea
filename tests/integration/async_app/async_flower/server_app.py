"""The app's ServerApp: PrivAgg with ``schedule = "async"`` runs buffered asynchronous training."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from async_flower import task
from fl_core.transport.flower import PrivAgg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    PrivAgg(task, context.run_config).start(grid=grid)
