"""Where a Federation gets one client's data: from memory, lazily from a task, nowhere (server), or one client (node).

A :class:`ClientSource` answers ``get(client)`` for 1-based client ids. The round loop
asks only for the clients it sampled, so :class:`TaskClients` loads a client's data the
first time that client is sampled; :class:`ServerOnly` (the server of a networked run,
which never holds data) and :class:`OneClient` (a node, which holds its own data only)
refuse every other request with a :class:`~fl_core.errors.DataError`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from fl_core.errors import DataError
from fl_core.task import DataSignature, Task, check_client_data, load_client_data, node_config_for

__all__ = ["ClientDataView", "ClientSource", "InMemoryClients", "OneClient", "ServerOnly", "TaskClients"]


@runtime_checkable
class ClientSource(Protocol):
    """One client's data on request."""

    @property
    def population(self) -> int: ...

    def get(self, client: int) -> Any:
        """The data of ``client`` (1-based). Raises DataError when this party may not hold it."""
        ...


def _check_id(client: int, population: int) -> None:
    if not (isinstance(client, int) and 1 <= client <= population):
        raise DataError(
            f"client {client!r} is not in 1..{population}", client=client if isinstance(client, int) else None
        )


class InMemoryClients:
    """A sequence of per-client datasets held in memory (``data[i]`` is client ``i + 1``'s).

    Each entry is checked the first time it is used (not None, a dataset, not empty, samples
    shaped like the other clients').
    """

    def __init__(self, data: Sequence[Any]) -> None:
        self._data = list(data)
        self._ref: tuple[int, DataSignature] | None = None
        self._checked: set[int] = set()

    @property
    def population(self) -> int:
        return len(self._data)

    def get(self, client: int) -> Any:
        _check_id(client, self.population)
        d = self._data[client - 1]
        if client not in self._checked:
            sig = check_client_data(d, client=client, source=f"client_data[{client - 1}]", reference=self._ref)
            if self._ref is None and sig is not None:
                self._ref = (client, sig)
            self._checked.add(client)
        return d


class TaskClients:
    """Every client of an in-process simulation, each loaded from ``task.load_data`` when first needed.

    Client ``i`` gets ``node_config_for(i, population, operator)`` (see
    :func:`fl_core.task.node_config_for`). Loaded data is kept for later rounds.
    """

    def __init__(self, task: Task, population: int, operator: Mapping[str, Any] | None = None) -> None:
        if population < 1:
            raise DataError(f"a federation needs at least one client, got {population}")
        self.task = task
        self._population = population
        self._operator = dict(operator or {})
        self._cache: dict[int, Any] = {}
        self._ref: tuple[int, DataSignature] | None = None

    @property
    def population(self) -> int:
        return self._population

    @property
    def loaded(self) -> tuple[int, ...]:
        """The clients whose data has been loaded so far."""
        return tuple(sorted(self._cache))

    def node_config(self, client: int) -> dict[str, Any]:
        return node_config_for(client, self._population, self._operator)

    def get(self, client: int) -> Any:
        _check_id(client, self._population)
        if client not in self._cache:
            data, sig = load_client_data(self.task, self.node_config(client), client=client, reference=self._ref)
            if self._ref is None and sig is not None:
                self._ref = (client, sig)
            self._cache[client] = data
        return self._cache[client]


class ServerOnly:
    """The server of a networked run: it knows the population size and holds no client data."""

    def __init__(self, population: int) -> None:
        if population < 1:
            raise DataError(f"a federation needs at least one client, got {population}")
        self._population = population

    @property
    def population(self) -> int:
        return self._population

    def get(self, client: int) -> Any:
        raise DataError(
            f"the server holds no client data (asked for client {client}'s): clients train on their own nodes",
            client=client if isinstance(client, int) else None,
        )


class OneClient:
    """A node of a networked run: it holds exactly one client's data; asking for another's is an error.

    ``data`` is that client's data, or a task (with ``node_config``) to load it from on
    first use.
    """

    def __init__(
        self,
        client: int,
        population: int,
        *,
        data: Any = None,
        task: Task | None = None,
        node_config: Mapping[str, Any] | None = None,
    ) -> None:
        _check_id(client, population)
        if (data is None) == (task is None):
            raise DataError("OneClient needs either the client's data or a task to load it from", client=client)
        self.client = client
        self._population = population
        self._task = task
        self._node_config = dict(node_config) if node_config is not None else node_config_for(client, population)
        self._data = data
        self._checked = False

    @property
    def population(self) -> int:
        return self._population

    def get(self, client: int) -> Any:
        if client != self.client:
            raise DataError(
                f"this node holds client {self.client}'s data only; it was asked for client {client}'s",
                client=client if isinstance(client, int) else None,
            )
        if not self._checked:
            if self._task is not None:
                self._data, _sig = load_client_data(self._task, self._node_config, client=client)
            else:
                check_client_data(self._data, client=client, source="client data")
            self._checked = True
        return self._data


class ClientDataView(Sequence[Any]):
    """``fed.client_data[i]`` is client ``i + 1``'s data, read through the federation's source."""

    def __init__(self, source: ClientSource) -> None:
        self._source = source

    def __len__(self) -> int:
        return self._source.population

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self._source.get(k + 1) for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._source.get(i + 1)

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self._source.get(i + 1)
