"""The app's ClientApp: privagg's mod answers every privagg packet (asynchronous training and buffer sessions)."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from async_flower import task
from fl_core.transport.flower import privagg_mod

app = ClientApp(mods=[privagg_mod(task)])


@app.train()
def train(msg: Message, context: Context) -> Message:  # only privagg packets reach this app
    raise RuntimeError("this test app trains through privagg only")
