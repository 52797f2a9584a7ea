"""Structure of the Flower transport: its modules import each other in one direction; one message pump."""

from __future__ import annotations

import ast
from pathlib import Path

import fl_core.transport.flower as flower_pkg

PKG = "fl_core.transport.flower"
DIR = Path(flower_pkg.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every transport module ``path`` imports, at module level or inside a function."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == PKG:
                out.update(f"{PKG}.{a.name}" for a in node.names if (DIR / f"{a.name}.py").exists())
            elif node.module.startswith(PKG + "."):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith(PKG + "."))
    return out


def import_graph() -> dict[str, set[str]]:
    mods = {f"{PKG}.{p.stem}": p for p in DIR.glob("*.py") if p.stem != "__init__"}
    return {m: {d for d in _imports(p) if d in mods and d != m} for m, p in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that returns to its start), or None."""
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        colour[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if colour.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in colour:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        colour[m] = 2
        return None

    for m in sorted(graph):
        if m not in colour:
            found = visit(m)
            if found:
                return found
    return None


def test_find_cycle_finds_a_cycle_and_accepts_a_dag() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_inside_the_flower_transport() -> None:
    graph = import_graph()
    assert {f"{PKG}.client", f"{PKG}.ahead", f"{PKG}.paillier", f"{PKG}.server"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_node_policy_sits_below_every_module_that_acts_for_a_node() -> None:
    graph = import_graph()
    assert graph[f"{PKG}.policy"] <= set(), graph[f"{PKG}.policy"]
    for m in ("ahead", "client", "paillier", "baseline"):
        assert f"{PKG}.policy" in graph[f"{PKG}.{m}"], m


def test_one_message_pump() -> None:
    import secagg.simulation

    for path in (DIR / "server.py", Path(secagg.simulation.__file__)):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        calls = {
            n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
            for n in ast.walk(tree)
            if isinstance(n, ast.Call)
        }
        assert "pump_stages" in calls, path
        assert "close_stage" not in calls, f"{path} closes stages itself instead of using secagg.pump"


def test_the_readme_diff_is_the_example_apps_diff_and_is_small() -> None:
    """README's "On Flower" diff shows exactly the lines that differ between the FedAvg and privagg apps."""
    import difflib

    repo = Path(__file__).resolve().parents[2]
    app = repo / "examples" / "fashion-cnn" / "fashion_cnn"
    changed: list[str] = []
    for plain, private in (("fedavg_client_app.py", "client_app.py"), ("fedavg_server_app.py", "server_app.py")):
        a = (app / plain).read_text(encoding="utf-8").splitlines()
        b = (app / private).read_text(encoding="utf-8").splitlines()
        changed += [
            line
            for line in difflib.unified_diff(a, b, lineterm="", n=0)
            if line[:1] in ("+", "-") and not line.startswith(("+++", "---"))
        ]
    assert len(changed) <= 10, changed
    readme = (repo / "README.md").read_text(encoding="utf-8")
    block = readme.split("```diff\n", 1)[1].split("```", 1)[0]
    shown = [line for line in block.splitlines() if line[:1] in ("+", "-") and not line.startswith(("+++", "---"))]
    assert sorted(shown) == sorted(changed)
