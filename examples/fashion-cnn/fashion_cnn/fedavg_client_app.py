"""The app's ClientApp: train the CNN on this node's shard."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fashion_cnn import task

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    model = task.make_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    data = task.load_data(context.node_config)
    task.train_fn(model, data)
    metrics = MetricRecord({"num-examples": len(data)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)
