"""The demo's ClientApp: its own FedAvg handler (the built-in demo's loop), plus privagg's client mod."""

from flwr.clientapp import ClientApp

from fl_core.transport.flower import privagg_mod
from fl_core.transport.flower.baseline import register_fedavg_client

# task=None: privagg's built-in demo (dataset and model follow the run configuration).
app = ClientApp(mods=[privagg_mod(None)])
register_fedavg_client(app)  # the app's own @app.train() handler: plain FedAvg when mode="fedavg"
