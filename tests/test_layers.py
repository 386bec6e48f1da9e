"""The package is layered: a module imports only from its own layer or a lower one, and no modules import each other
in a circle. Every first-party import counts, at module level or inside a function (docs/architecture.md)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).parents[1] / "src" / "picstory"

# Top-level module or package → layer. Keep in step with docs/architecture.md.
LAYER = {
    "errors": 0, "_version": 0, "files": 0, "config": 0, "options": 0, "device": 0, "runs": 0,
    "data": 1, "models": 1,
    "training": 2, "evaluation": 2,
    "deploy": 3, "doctor": 3,
    "pages": 4,
    "pipeline": 5,
    "compare": 6, "monitor": 6,
    "commands": 7, "cli": 7, "launch": 7, "demo": 7, "__init__": 7, "__main__": 7,
}

# (importing module, imported module) pairs that are accepted although they break a rule. Empty, and it stays so:
# a new feature that needs one is a sign that something lives in the wrong layer.
ALLOWED: set[tuple[str, str]] = set()


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def imports(path: pathlib.Path):
    """(imported module, line) for every first-party import in the file: relative or `picstory.`-absolute."""
    own = module_name(path).split(".") if path.name != "__init__.py" or path.parent != ROOT else []
    package = own if path.name == "__init__.py" else own[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == "picstory"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
            elif (node.module or "").split(".")[0] == "picstory":
                base = []
            else:
                continue
            mod = (node.module or "").split(".")
            mod = mod[1:] if not node.level else [m for m in mod if m]
            stem = base + mod
            for alias in node.names:  # `from . import sources` names a module, `from .x import f` a name in x
                sub = stem + [alias.name]
                targets.append(sub if is_module(".".join(sub)) else stem)
        for target in targets:
            yield ".".join(target) or "__init__", node.lineno


def top(module: str) -> str:
    return module.split(".")[0]


def graph() -> dict[str, set[tuple[str, int]]]:
    edges: dict[str, set[tuple[str, int]]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        name = module_name(path)
        edges[name] = {(t, line) for t, line in imports(path) if t != name}
    return edges


def upward_imports(edges) -> list[str]:
    bad = []
    for src, targets in edges.items():
        for dst, line in sorted(targets):
            a, b = top(src), top(dst)
            if a not in LAYER or b not in LAYER:
                bad.append(f"{src}:{line} imports {dst}: add {a if a not in LAYER else b!r} to LAYER")
            elif a != b and LAYER[b] > LAYER[a] and (src, dst) not in ALLOWED:
                bad.append(f"{src}:{line} imports {dst} (layer {LAYER[b]} '{b}' above layer {LAYER[a]} '{a}')")
    return bad


def cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), as sorted lists."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]
    succ = {m: sorted({d for d, _ in ts if d in edges and (m, d) not in ALLOWED}) for m, ts in edges.items()}

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(succ):
        if v not in index:
            visit(v)
    return found


def test_imports_only_go_down_the_layers():
    bad = upward_imports(graph())
    assert not bad, "imports that go up a layer:\n  " + "\n  ".join(bad)


def test_no_module_cycles():
    found = cycles(graph())
    assert not found, "modules that import each other in a circle:\n  " + "\n  ".join(" ⇄ ".join(c) for c in found)


def test_the_checks_can_fail():
    fake = {"data.split": {("pipeline", 3)}, "pipeline": {("data.split", 1)}}
    assert upward_imports(fake) == ["data.split:3 imports pipeline (layer 5 'pipeline' above layer 1 'data')"]
    assert cycles(fake) == [["data.split", "pipeline"]]


def test_every_module_has_a_layer():
    missing = sorted({top(m) for m in graph()} - set(LAYER))
    assert not missing, f"modules with no layer (add them to LAYER and docs/architecture.md): {missing}"


# Modules added since the table was drawn, with the layer docs/architecture.md gives them (their package's layer).
MODULES = {"pipeline.cv_run": 5, "pages.cv_page": 4, "doctor.issues": 3, "evaluation.label_issues": 2,
           "evaluation.multilabel": 2, "evaluation.calibration": 2, "evaluation.ood": 2,
           "pipeline.confidence_run": 5, "deploy.unknown": 3, "pages.confidence_page": 4}


def test_new_modules_exist_in_their_documented_layer():
    edges = graph()
    doc = (ROOT.parents[1] / "docs" / "architecture.md").read_text()
    for module, layer in MODULES.items():
        assert module in edges and LAYER[top(module)] == layer, module
        assert module.split(".")[1] in doc, f"{module} is missing from docs/architecture.md"
    # the cross-validation calls the training run, never the reverse
    assert any(dst == "pipeline.training_run" for dst, _ in edges["pipeline.cv_run"])
    assert not any(dst == "pipeline.cv_run" for dst, _ in edges["pipeline.training_run"])
