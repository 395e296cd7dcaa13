"""The house, checked from the source: layers import only downwards, the back end is reached only
through its face, and no two files of svdadapt import each other in a loop.

Layers, top to bottom: the CLI and orchestration (svdadapt.pipeline: recipes, the runner, its
journal and resume rules; svdadapt.quickstart) → the commands (svdadapt.commands) → the domain
(calibrate, decompose, build, train, evaluate, compress, adapters, data, runs, ...) → the back end
(svdadapt.backend) → the error type every layer raises (svdadapt.errors). Every import counts,
those inside functions included. Orchestration calls the commands through their face, and of
what lies below them uses only a few named helpers.
Which process of a launch this is, and how many there are, only the back end knows (and the CLI
face, which prints one summary per launch): everyone else asks the launch object (``backend.launch()``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import svdadapt

PACKAGE = Path(svdadapt.__file__).parent
TOP = {"svdadapt.cli", "svdadapt.__main__"}
ORCHESTRATION = ("svdadapt.pipeline", "svdadapt.quickstart")  # packages, in the top layer
# What orchestration uses below the commands' face: the back end's face (one process or a launch),
# atomic writes and locks, the error type, options (built and compared by flag name), and for the
# quickstart the methods table (rows by name), plots (its loss curves) and a model's positions.
PIPELINE_USES = {"svdadapt.commands", "svdadapt.backend", "svdadapt.atomic", "svdadapt.errors", "svdadapt.options"}
QUICKSTART_USES = PIPELINE_USES | {"svdadapt.pipeline", "svdadapt.methods", "svdadapt.plots", "svdadapt.models"}
# What only the back end may touch: process memory, the collector, threads, oneDNN's private op,
# LAPACK through ctypes, process groups.
LOW_LEVEL_MODULES = ("ctypes", "gc", "mmap", "threadpoolctl", "concurrent.futures", "torch.distributed")
LOW_LEVEL_NAMES = ("mkldnn", "malloc_trim", "madvise", "gc.freeze", "set_num_threads", "cython_lapack")
# What reads the rank or the world size: torch.distributed's, accelerate's, Trainer's, a launcher's variables.
RANK_READERS = {"svdadapt.cli"}  # besides the back end
RANK_NAMES = {"world_size", "get_world_size", "get_rank", "is_main_process", "is_local_main_process",
              "in_process_group", "is_world_process_zero", "is_local_process_zero", "process_index",
              "local_process_index", "local_rank", "num_processes", "distributed"}  # fmt: skip
RANK_VARIABLES = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(module: str) -> set[str]:
    """Every module ``module`` imports (inside functions too), named as precisely as possible: for
    ``from X import y``, ``X.y`` when that is a module of svdadapt, else ``X``."""
    path = MODULES[module]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path, node)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return found


def _layer(module: str) -> str:
    if module == "svdadapt.errors":
        return "errors"
    if module in TOP or module.startswith(ORCHESTRATION):
        return "top"
    if module.startswith("svdadapt.commands"):
        return "commands"
    if module.startswith("svdadapt.backend"):
        return "backend"
    return "domain"


ORDER = ["errors", "backend", "domain", "commands", "top"]


def test_the_modules_are_found():
    assert {"svdadapt.cli", "svdadapt.commands.build", "svdadapt.backend.onednn", "svdadapt.methods"} <= set(MODULES)
    assert {"svdadapt.pipeline.journal", "svdadapt.pipeline.resume", "svdadapt.quickstart"} <= set(MODULES)
    assert {_layer(m) for m in MODULES if m.startswith(ORCHESTRATION)} == {"top"}


@pytest.mark.parametrize("module", [m for m in MODULES if _layer(m) != "backend"])
def test_outside_the_back_end_no_module_reaches_past_its_face(module):
    private = sorted(m for m in imports_of(module) if m.startswith("svdadapt.backend."))
    assert not private, f"{module} imports {private}; use what svdadapt.backend exports"
    low = sorted(m for m in imports_of(module) if m.startswith(LOW_LEVEL_MODULES))
    assert not low, f"{module} imports {low}: a back-end decision"
    source = MODULES[module].read_text()
    used = [name for name in LOW_LEVEL_NAMES if name in source]
    assert not used, f"{module} uses {used}: a back-end decision"


def rank_readings(source: str) -> list[str]:
    """Where ``source`` reads the rank or the world size: a name of :data:`RANK_NAMES`, a call of
    ``rank()``, ``dist.`` anything, a launch's ``.rank``, or a launcher's variable named in a string."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name | ast.Attribute):
            name = node.id if isinstance(node, ast.Name) else node.attr
            base = node.value if isinstance(node, ast.Attribute) else None
            owner = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else ""
            if name in RANK_NAMES or owner == "dist" or (name == "rank" and owner.endswith("launch")):
                found.append(ast.unparse(node))
        elif isinstance(node, ast.Call) and not node.args and not node.keywords:
            if ast.unparse(node.func).split(".")[-1] == "rank":
                found.append(ast.unparse(node))
        elif isinstance(node, ast.Constant) and node.value in RANK_VARIABLES:
            found.append(repr(node.value))
    return sorted(set(found))


@pytest.mark.parametrize(
    "source, read",
    [
        ("backend.world_size() > 1", True), ("os.environ.get('RANK', '0')", True), ("dist.get_rank()", True),
        ("int(os.environ['WORLD_SIZE'])", True), ("trainer.is_world_process_zero()", True), ("rank()", True),
        ("torch.distributed.barrier()", True), ("dist.all_reduce(t)", True), ("settings.launch.rank == 0", True),
        ("state.is_main_process", True), ("backend.in_process_group()", True),
        ("plan.rank", False), ("point.rank(k)", False), ("RANK_ALLOCATIONS['x']", False), ("launch.writer", False),
        ("launch.size == 1", False), ("launch.share(batches)", False), ("'rank 0 writes'", False),
    ],
)  # fmt: skip
def test_the_rank_check_sees_what_reads_the_rank(source, read):
    assert bool(rank_readings(source)) is read, rank_readings(source)


@pytest.mark.parametrize("module", [m for m in MODULES if _layer(m) != "backend" and m not in RANK_READERS])
def test_only_the_back_end_knows_rank_and_world_size(module):
    found = rank_readings(MODULES[module].read_text())
    assert not found, f"{module} reads the rank or world size ({found}); ask the launch object (backend.launch)"


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith(ORCHESTRATION)])
def test_orchestration_calls_the_commands_not_the_domain(module):
    package = module.split(".")[1]
    allowed = PIPELINE_USES if package == "pipeline" else QUICKSTART_USES
    own = f"svdadapt.{package}"
    used = {m for m in imports_of(module) if m.startswith("svdadapt.") and not m.startswith(own + ".") and m != own}
    beyond = sorted(used - allowed)
    assert not beyond, f"{module} imports {beyond}; orchestration calls the commands (svdadapt.commands)"


@pytest.mark.parametrize("module", list(MODULES))
def test_each_layer_imports_only_the_layers_below(module):
    mine = ORDER.index(_layer(module))
    upward = sorted(m for m in imports_of(module) if m in MODULES and ORDER.index(_layer(m)) > mine and m != "svdadapt")
    assert not upward, f"{module} ({_layer(module)}) imports {upward} from a layer above it"


def test_no_two_files_import_each_other_in_a_loop():
    graph = {m: {i for i in imports_of(m) if i in MODULES and i != m} for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_the_console_starts_without_the_training_stack():
    """Building the parser imports every command's options, not what only training needs: transformers'
    Trainer (and with it accelerate and PEFT) costs seconds and hundreds of MiB per process."""
    import subprocess
    import sys

    code = (
        "import sys, svdadapt.cli as c; c.build_parser(c.subcommands()); "
        "print(sorted(m for m in ('transformers.trainer', 'accelerate', 'peft', 'matplotlib') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


README = PACKAGE.parent.parent / "README.md"
README_LAYERS = {"top": "top", "commands": "commands", "domain": "domain", "back end": "backend", "errors": "errors"}


def readme_layout() -> dict[str, str]:
    """{module or package of svdadapt: layer} as the README's "Layout" block lists them."""
    text = README.read_text(encoding="utf-8")
    block = text[text.index("## Layout") :].split("```")[1]
    listed, layer = {}, None
    for line in block.splitlines():
        if line.strip().startswith("──"):
            layer = README_LAYERS[line.strip().strip("─ ")]
        elif line.startswith("  ") and not line.startswith("   ") and layer is not None:
            names = line.strip().split("  ")[0]
            for name in (n.strip() for n in names.split(",")):
                module = "svdadapt" if name == "__init__.py" else "svdadapt." + name.removesuffix(".py").rstrip("/")
                assert module not in listed, f"the README lists {name} twice"
                listed[module] = layer
    return listed


def test_the_readme_lists_every_file_of_the_package_under_the_layer_enforced_here():
    listed = readme_layout()
    top_level = {m.split(".")[1] if m != "svdadapt" else "" for m in MODULES}
    actual = {"svdadapt." + name if name else "svdadapt" for name in top_level}
    assert set(listed) == actual, f"missing from the README: {sorted(actual - set(listed))}; " \
        f"not in the package: {sorted(set(listed) - actual)}"  # fmt: skip
    for entry, layer in listed.items():
        inside = [m for m in MODULES if m == entry or m.startswith(entry + ".")] if entry != "svdadapt" else [entry]
        wrong = sorted(m for m in inside if _layer(m) != layer)
        assert not wrong, f"the README puts {entry} in the {layer} layer; the test puts {wrong} elsewhere"
