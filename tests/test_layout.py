"""The application's layout holds: no experiment driver imports another, and no import chain inside minichatgpt/ is
longer than 6 modules (cli -> compare -> finished_run -> config -> rlhf -> sampling is one of 6).

The import graph is read from the source with `ast`, every import statement counted, those inside functions too.
The negative controls build small packages that break each rule, and the checker must name the break.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRIVERS = ("pipeline", "compare", "overopt")   # the experiment drivers; scripts/sweep.py is the fourth
LONGEST = 6


def imports_of(file, package, modules):
    """The modules of `package` (named in `modules`) that one Python file imports -> set of names."""
    found = set()
    for node in ast.walk(ast.parse(Path(file).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            parts = [a.name.split(".") for a in node.names]
            found |= {p[1] for p in parts if p[0] == package and len(p) > 1}
        elif isinstance(node, ast.ImportFrom):
            inside = node.level == 1 or (node.level == 0 and (node.module or "").split(".")[0] == package)
            if not inside:
                continue
            path = (node.module or "").split(".") if node.level == 1 else (node.module or "").split(".")[1:]
            if path and path[0]:
                found.add(path[0])
            else:                                   # from . import a, b  /  from package import a, b
                found |= {a.name for a in node.names if a.name in modules}
    return found & modules


def import_graph(package_dir):
    """{module: modules of the same package it imports} for every .py file directly in package_dir."""
    package_dir = Path(package_dir)
    modules = {f.stem for f in package_dir.glob("*.py")}
    return {m: imports_of(package_dir / f"{m}.py", package_dir.name, modules) - {m} for m in modules}


def longest_chain(graph):
    """The longest import chain, as the list of its modules; ValueError naming a cycle if there is one."""
    best, visiting = {}, []

    def chain_from(module):
        if module in visiting:
            raise ValueError("import cycle: " + " -> ".join(visiting[visiting.index(module):] + [module]))
        if module not in best:
            visiting.append(module)
            tails = [chain_from(m) for m in sorted(graph[module])]
            visiting.pop()
            best[module] = [module] + max(tails, key=len, default=[])
        return best[module]

    return max((chain_from(m) for m in sorted(graph)), key=len)


def reaches(graph, start):
    """Every module `start` imports, directly or through others."""
    seen, todo = set(), list(graph[start])
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph[m]
    return seen


def layout_problems(package_dir, drivers=DRIVERS, scripts=(), longest=LONGEST):
    """Every break of the two rules -> list of sentences (empty when the layout holds)."""
    graph = import_graph(package_dir)
    problems = []
    chain = longest_chain(graph)
    if len(chain) > longest:
        problems.append(f"an import chain of {len(chain)} modules (at most {longest}): {' -> '.join(chain)}")
    for driver in drivers:
        for other in sorted(reaches(graph, driver) & set(drivers)):
            problems.append(f"the driver {driver} imports the driver {other}")
    for script in scripts:
        used = imports_of(script, Path(package_dir).name, set(graph))
        for other in sorted((used | {r for m in used for r in reaches(graph, m)}) & set(drivers)):
            problems.append(f"{Path(script).name} imports the driver {other}")
    return problems


def test_no_driver_imports_another_and_no_import_chain_is_longer_than_six():
    graph = import_graph(ROOT / "minichatgpt")
    assert {"pipeline", "compare", "overopt", "finished_run", "cli"} <= set(graph), sorted(graph)
    chain = longest_chain(graph)
    print("longest chain:", " -> ".join(chain))
    problems = layout_problems(ROOT / "minichatgpt", scripts=[ROOT / "scripts" / "sweep.py"])
    assert not problems, "\n".join(problems)
    # what the drivers share sits below them: the finished run, and through it the evaluation
    for driver in DRIVERS:
        assert "finished_run" in graph[driver], driver
    assert "finished_run" in imports_of(ROOT / "scripts" / "sweep.py", "minichatgpt", set(graph))


def _package(tmp_path, imports):
    """A package `pkg` of modules {name: [modules it imports]} written as relative and absolute imports."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    for k, (name, deps) in enumerate(imports.items()):
        lines = [f"from .{d} import thing" if (k + i) % 3 == 0 else f"from . import {d}" if (k + i) % 3 == 1
                 else f"import pkg.{d}" for i, d in enumerate(deps)]
        (pkg / f"{name}.py").write_text("\n".join(["def f():", *("    " + line for line in lines), "    return 1"])
                                        if name == "c" else "\n".join(lines) + "\n")
    return pkg


def test_the_checker_catches_a_long_chain_a_driver_importing_a_driver_and_a_cycle(tmp_path):
    """Negative controls: seven modules in a row (the import of c sits inside a function), a driver that reaches
    another through a shared module, a script that does, and a cycle."""
    pkg = _package(tmp_path, {"a": ["b"], "b": ["c"], "c": ["d"], "d": ["e"], "e": ["f"], "f": ["g"], "g": [],
                              "compare": ["shared"], "shared": ["overopt"], "overopt": [], "pipeline": []})
    script = tmp_path / "sweep.py"
    script.write_text("from pkg.shared import thing\n")
    problems = layout_problems(pkg, scripts=[script])
    print("\n".join(problems))
    assert problems[0] == "an import chain of 7 modules (at most 6): a -> b -> c -> d -> e -> f -> g"
    assert "the driver compare imports the driver overopt" in problems
    assert "sweep.py imports the driver overopt" in problems and len(problems) == 3
    assert layout_problems(pkg, scripts=[script], longest=7)[0].startswith("the driver compare")   # 7 is allowed there

    (tmp_path / "cyclic").mkdir()
    cyclic = _package(tmp_path / "cyclic", {"a": ["b"], "b": ["c"], "c": ["a"]})
    try:
        longest_chain(import_graph(cyclic))
    except ValueError as e:
        assert "import cycle: a -> b -> c -> a" in str(e)
    else:
        raise AssertionError("the cycle a -> b -> c -> a was not found")
