"""The application's layout holds three rules: no driver (the main job, compare, overopt, and scripts/sweep.py)
imports another; no import chain inside minichatgpt/ is longer than 6 modules, a module in a folder counting as one
link (commands.cli -> run.pipeline -> run.finished_run -> settings.config -> loop.rlhf -> loop.methods is one of 6);
and the libraries (minigpt_np, reward, ppo_np) never import the application.

The import graph is read from the source with `ast`, every import statement counted, those inside functions too,
relative or absolute. The negative controls build small packages that break each rule, and the checker must name
the break.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = ("run.pipeline", "experiments.compare", "experiments.overopt")   # scripts/sweep.py is the fourth
LIBRARIES = ("minigpt_np", "reward", "ppo_np")
LONGEST = 6


def module_names(package_dir):
    """Every module of a package, by its dotted name inside it ("loop.rlhf"; the package's own __init__ as
    "__init__"); a folder's __init__ is its folder's name."""
    package_dir = Path(package_dir)
    names = {}
    for file in package_dir.rglob("*.py"):
        parts = list(file.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        names[".".join(parts)] = file
    return names


def imports_of(file, package, modules, inside=()):
    """The modules of `package` (dotted names in `modules`) that one Python file imports; inside: the folders of
    the package the file sits in (for its relative imports) -> set of names."""
    found = set()

    def add(target, names):
        """`from <target> import <names>`, target a list of the package's folders and modules."""
        dotted = ".".join(target)
        if dotted in modules and dotted:
            found.add(dotted)
        for name in names:                                # from a folder (or the package) import a module
            if ".".join((*target, name)) in modules:
                found.add(".".join((*target, name)))

    for node in ast.walk(ast.parse(Path(file).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package:
                    add(parts[1:], ())
        elif isinstance(node, ast.ImportFrom):
            path = (node.module or "").split(".") if node.module else []
            if node.level:
                base = list(inside)[:len(inside) - (node.level - 1)] if node.level > 1 else list(inside)
                add(base + path, [a.name for a in node.names])
            elif path and path[0] == package:
                add(path[1:], [a.name for a in node.names])
    return found


def import_graph(package_dir):
    """{module: modules of the same package it imports} for every module of the package, folders included."""
    package_dir = Path(package_dir)
    modules = module_names(package_dir)
    graph = {}
    for name, file in modules.items():
        inside = file.relative_to(package_dir).parent.parts
        graph[name] = imports_of(file, package_dir.name, set(modules), inside) - {name}
    return {name: deps for name, deps in graph.items() if name == "__init__" or Path(modules[name]).stem != "__init__"
            or deps}


def longest_chain(graph):
    """The longest import chain, as the list of its modules; ValueError naming a cycle if there is one."""
    best, visiting = {}, []

    def chain_from(module):
        if module in visiting:
            raise ValueError("import cycle: " + " -> ".join(visiting[visiting.index(module):] + [module]))
        if module not in best:
            visiting.append(module)
            tails = [chain_from(m) for m in sorted(graph.get(module, ()))]
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
            todo += graph.get(m, ())
    return seen


def layout_problems(package_dir, drivers=DRIVERS, scripts=(), longest=LONGEST):
    """Every break of the first two rules -> list of sentences (empty when the layout holds)."""
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


def library_problems(root, libraries=LIBRARIES, app="minichatgpt"):
    """Every import of the application in a library's files -> list of sentences."""
    problems = []
    for library in libraries:
        for file in sorted((Path(root) / library).rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
                if any(name.split(".")[0] == app for name in names):
                    problems.append(f"{file.relative_to(root)} imports {app} (line {node.lineno})")
    return problems


def test_no_driver_imports_another_and_no_import_chain_is_longer_than_six():
    graph = import_graph(ROOT / "minichatgpt")
    assert {"run.pipeline", "experiments.compare", "experiments.overopt", "run.finished_run", "commands.cli",
            "loop.rlhf"} <= set(graph), sorted(graph)
    chain = longest_chain(graph)
    print("longest chain:", " -> ".join(chain))
    problems = layout_problems(ROOT / "minichatgpt", scripts=[ROOT / "scripts" / "sweep.py"])
    assert not problems, "\n".join(problems)
    # what the drivers share sits below them: the finished run, and through it the evaluation
    for driver in DRIVERS:
        assert "run.finished_run" in graph[driver], driver
    assert "run.finished_run" in imports_of(ROOT / "scripts" / "sweep.py", "minichatgpt", set(graph))


def test_the_libraries_never_import_the_application():
    problems = library_problems(ROOT)
    assert not problems, "\n".join(problems)


def _package(tmp_path, imports, name="pkg"):
    """A package of modules {name: [modules it imports]} written as relative and absolute imports; a name "f.m" is
    module m in folder f."""
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for k, (module, deps) in enumerate(imports.items()):
        folder, stem = module.rpartition(".")[::2]
        (pkg / folder).mkdir(exist_ok=True)
        (pkg / folder / "__init__.py").write_text("")
        up = ".." if folder else "."
        lines = []
        for i, d in enumerate(deps):
            d_folder, d_stem = d.rpartition(".")[::2]
            same = d_folder == folder
            kind = (k + i) % 3
            if kind == 0:
                lines.append(f"from .{d_stem} import thing" if same else f"from {up}{d_folder}.{d_stem} import thing"
                             if d_folder else f"from {up}{d_stem} import thing")
            elif kind == 1:
                lines.append(f"from . import {d_stem}" if same else f"from {up}{d_folder} import {d_stem}"
                             if d_folder else f"from {up} import {d_stem}")
            else:
                lines.append(f"import {name}.{d}")
        text = "\n".join(["def f():", *("    " + line for line in lines), "    return 1"]) if stem == "c" else \
            "\n".join(lines) + "\n"
        (pkg / folder / f"{stem}.py").write_text(text)
    return pkg


def test_the_checker_catches_a_long_chain_a_driver_importing_a_driver_and_a_cycle(tmp_path):
    """Negative controls: seven modules in a row across folders (the import of c sits inside a function), a driver
    that reaches another through a shared module, a script that does, and a cycle."""
    pkg = _package(tmp_path, {"a": ["x.b"], "x.b": ["x.c"], "x.c": ["y.d"], "y.d": ["e"], "e": ["y.f"], "y.f": ["g"],
                              "g": [], "jobs.compare": ["shared"], "shared": ["jobs.overopt"], "jobs.overopt": [],
                              "jobs.pipeline": []})
    script = tmp_path / "sweep.py"
    script.write_text("from pkg.shared import thing\n")
    drivers = ("jobs.pipeline", "jobs.compare", "jobs.overopt")
    problems = layout_problems(pkg, drivers=drivers, scripts=[script])
    print("\n".join(problems))
    assert problems[0] == "an import chain of 7 modules (at most 6): a -> x.b -> x.c -> y.d -> e -> y.f -> g"
    assert "the driver jobs.compare imports the driver jobs.overopt" in problems
    assert "sweep.py imports the driver jobs.overopt" in problems and len(problems) == 3
    assert layout_problems(pkg, drivers=drivers, scripts=[script], longest=7)[0].startswith("the driver")

    (tmp_path / "cyclic").mkdir()
    cyclic = _package(tmp_path / "cyclic", {"a": ["b"], "b": ["c"], "c": ["a"]})
    try:
        longest_chain(import_graph(cyclic))
    except ValueError as e:
        assert "import cycle: a -> b -> c -> a" in str(e)
    else:
        raise AssertionError("the cycle a -> b -> c -> a was not found")


def test_the_checker_catches_a_library_that_imports_the_application(tmp_path):
    """Negative control: a library module that imports the application, absolutely, inside a function."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "fine.py").write_text("import numpy\nfrom . import other\n")
    (tmp_path / "lib" / "bad.py").write_text("def f():\n    from minichatgpt.loop import rlhf\n    return rlhf\n")
    (tmp_path / "lib" / "worse.py").write_text("import minichatgpt.run.stages\n")
    problems = library_problems(tmp_path, libraries=("lib",))
    assert problems == ["lib/bad.py imports minichatgpt (line 2)", "lib/worse.py imports minichatgpt (line 1)"], \
        problems
