"""The house's imports run one way: from the entry point down to the pure rooms, with no circle.

Read from the source (ast), nothing is imported: every `import medssl_jax...` of medssl_jax/, tfds_builders/
and main.py, at module level or inside a function, is an edge between modules.
"""
import ast
import collections
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Rooms from the top floor down. A module may import its own room and the rooms below it, never one above.
# tfds_builders/ share the data floor (data/pipeline.py opens them; two builders draw with data/'s generators).
FLOORS = (
    ("main", "medssl_jax.cli", "medssl_jax.__main__", "medssl_jax.dry_run"),
    ("medssl_jax.tables",),
    ("medssl_jax.experiment",),
    ("medssl_jax.projects",),
    ("medssl_jax.modes",),
    ("medssl_jax.protocols",),
    ("medssl_jax.export", "medssl_jax.evals"),
    ("medssl_jax.train",),
    ("medssl_jax.config",),
    ("medssl_jax.objectives",),
    ("medssl_jax.data", "tfds_builders"),
    ("medssl_jax.models", "medssl_jax.augment", "medssl_jax.text"),
    ("medssl_jax.torch_resnet", "medssl_jax.xla_cpu", "medssl_jax"),
)
# Imports of medssl_jax modules inside functions: {(module, imported): reason}. Only optional heavy dependencies.
LOCAL_IMPORTS_ALLOWED = {}


def _modules() -> dict[str, pathlib.Path]:
  out = {"main": ROOT / "main.py"}
  for top in ("medssl_jax", "tfds_builders"):
    for path in (ROOT / top).rglob("*.py"):
      name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
      out[name.removesuffix(".__init__")] = path
  return out


def _graph():
  """({module: {imported module}}, [(module, imported, line) of imports inside functions])."""
  modules = _modules()

  def resolve(name):  # 'medssl_jax.data.pipeline.open_dataset' -> 'medssl_jax.data.pipeline'
    while name and name not in modules:
      name = name.rpartition(".")[0]
    return name

  edges, local = collections.defaultdict(set), []
  for name, path in modules.items():
    tree = ast.parse(path.read_text(), filename=str(path))

    def visit(node, in_function):
      for child in ast.iter_child_nodes(node):
        inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        targets = []
        if isinstance(child, ast.Import):
          targets = [a.name for a in child.names]
        elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
          targets = [f"{child.module}.{a.name}" for a in child.names]
        for target in targets:
          dep = resolve(target)
          if dep and dep != name and target.split(".")[0] in ("medssl_jax", "tfds_builders"):
            edges[name].add(dep)
            if inside:
              local.append((name, dep, child.lineno))
        visit(child, inside)

    visit(tree, False)
  return modules, edges, local


def _floor(module: str) -> int:
  best = None
  for i, rooms in enumerate(FLOORS):
    for room in rooms:
      if module == room or module.startswith(room + "."):
        if best is None or len(room) > best[1]:
          best = (i, len(room))
  assert best is not None, f"{module} is in no room of FLOORS: add its room to tests/test_import_graph.py"
  return best[0]


@pytest.fixture(scope="module")
def graph():
  return _graph()


def test_no_import_circle(graph):
  modules, edges, _ = graph
  index, low, stack, on_stack, circles = {}, {}, [], set(), []

  def connect(v):  # Tarjan's strongly connected components.
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(edges.get(v, ())):
      if w not in index:
        connect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        circles.append(sorted(component))

  for v in sorted(modules):
    if v not in index:
      connect(v)
  assert not circles, f"modules importing each other in a circle: {circles}"


def test_imports_run_down(graph):
  _, edges, _ = graph
  up = sorted(f"{a} -> {b}" for a, deps in edges.items() for b in deps if _floor(b) < _floor(a))
  assert not up, f"imports from a lower room back up (see FLOORS): {up}"


def test_projects_stand_alone(graph):
  """A project imports the core, never another project."""
  _, edges, _ = graph
  project = lambda m: m.split(".")[2] if m.startswith("medssl_jax.projects.") else None
  crossing = sorted(f"{a} -> {b}" for a, deps in edges.items() for b in deps
                    if project(a) and project(b) and project(a) != project(b))
  assert not crossing, f"projects importing each other: {crossing}"


def test_no_hidden_imports(graph):
  _, _, local = graph
  hidden = [f"{m}:{line} imports {dep}" for m, dep, line in local if (m, dep) not in LOCAL_IMPORTS_ALLOWED]
  assert not hidden, f"medssl_jax imports inside functions (import at the top, or fix the room): {hidden}"


def test_evals_work_on_arrays():
  """evals/ holds functions of a model, its variables and arrays; reading a config is a protocol's or a mode's job."""
  readers = []
  for path in sorted((ROOT / "medssl_jax" / "evals").glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.FunctionDef):
        args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
        if any(a.arg == "config" for a in args):
          readers.append(f"{path.name}:{node.lineno} {node.name}")
  assert not readers, f"functions in evals/ that take a config (move them to protocols/ or modes/): {readers}"


def test_every_room_has_a_floor(graph):
  modules, _, _ = graph
  for name in modules:
    _floor(name)


def test_detects_a_circle_and_an_upward_import(tmp_path, monkeypatch):
  """The checks above would catch what they guard against."""
  a = tmp_path / "medssl_jax" / "evals"
  a.mkdir(parents=True)
  (tmp_path / "main.py").write_text("")
  (tmp_path / "tfds_builders").mkdir()
  (a / "x.py").write_text("from medssl_jax.evals import y\nfrom medssl_jax import experiment\n")
  (a / "y.py").write_text("def f():\n  from medssl_jax.evals import x\n")
  (tmp_path / "medssl_jax" / "experiment.py").write_text("")
  monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
  modules, edges, local = _graph()
  assert edges["medssl_jax.evals.x"] == {"medssl_jax.evals.y", "medssl_jax.experiment"}
  assert edges["medssl_jax.evals.y"] == {"medssl_jax.evals.x"}
  assert local == [("medssl_jax.evals.y", "medssl_jax.evals.x", 2)]
  assert _floor("medssl_jax.experiment") < _floor("medssl_jax.evals.x")
