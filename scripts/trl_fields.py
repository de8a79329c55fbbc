"""Read the field names and declared defaults of TRL's config dataclasses from an unpacked wheel, with `ast`, and
write them as JSON, so that a test can check docs against a pinned TRL release without importing trl or torch.

    python scripts/trl_fields.py TRL_DIR [--transformers TRANSFORMERS_DIR] [--out tests/data/trl_1_16_0_fields.json]

TRL_DIR is an unpacked trl wheel (the folder that holds `trl/` and `trl-*.dist-info/`). The classes read are
PPOConfig, GRPOConfig, RLOOConfig, DPOConfig and RewardConfig, wherever they are defined under `trl/`, with the
fields they inherit from TRL's own base classes. A class the release does not have is written as null: trl 1.16.0
has no PPOConfig (the last release with one, in trl.experimental.ppo, is 1.12.0). Their root, transformers'
TrainingArguments, has about a hundred fields; only the ones a learner sets in every run are taken from it
(BASE_FIELDS), read from TRANSFORMERS_DIR, an unpacked transformers wheel. A field a TRL class redeclares keeps
TRL's default and line.

Each field is written with its declared default and the file:line that declares it. A default that is a literal
(a number, string, bool, None, or a `default_factory` lambda returning a literal list or dict) is written as its
value; anything else (a name such as `default_optim`, a call) as {"expr": source text}. These are the defaults as
declared: some `__post_init__` methods change them afterwards, e.g. GRPOConfig maps scale_rewards True to "group"
and fills steps_per_generation from gradient_accumulation_steps. Read those in the source.

How tests/data/trl_1_16_0_fields.json was made (the wheels are files from PyPI, unchanged):

    pip download --no-deps trl==1.16.0 -d /tmp/trl116          # trl-1.16.0-py3-none-any.whl, sha256
        # c4726e139dd40e1a41661511c639c8a68416782b2e3e8c0befebd77bb7ba0396
    pip download --no-deps transformers==5.25.0 -d /tmp/tf525  # transformers-5.25.0-py3-none-any.whl, sha256
        # 8ca7a96cc329e5a053c9e770711e73d7bd9d77240ff62049fca6d253965cda52
    cd /tmp/trl116 && unzip -q trl-1.16.0-py3-none-any.whl -d src
    cd /tmp/tf525 && unzip -q transformers-5.25.0-py3-none-any.whl -d src
    python scripts/trl_fields.py /tmp/trl116/src --transformers /tmp/tf525/src --out tests/data/trl_1_16_0_fields.json

tests/data/trl_1_12_0_fields.json, for PPOConfig and PPOTrainer (trl.experimental.ppo, gone from 1.13.0 on), the same
way from trl 1.12.0 (trl-1.12.0-py3-none-any.whl, sha256 9c8f117b21a941edbc85744f5a341c9453d38e81f24ae81d3c6e9b9ca3b96409):

    pip download --no-deps trl==1.12.0 -d /tmp/trl112 && cd /tmp/trl112 && unzip -q trl-1.12.0-py3-none-any.whl -d src
    python scripts/trl_fields.py /tmp/trl112/src --transformers /tmp/tf525/src --out tests/data/trl_1_12_0_fields.json

Besides the config fields, each file lists, for each trainer of TRAINERS, its __init__'s parameter names and the metric
names it logs (`logged_metrics`) with the line that first writes each: docs/graduate.md's tables and
scripts/trl_grpo_sentiment.py are checked against them.

transformers 5.25.0 was the newest release when this was run. trl 1.16.0 asks for transformers>=4.56.2, whose
TrainingArguments gives the first seven BASE_FIELDS the same defaults (checked by running this script with both);
the last five were added later and read from 5.25.0 only.
"""
import argparse
import ast
import json
import sys
from pathlib import Path

CLASSES = ("PPOConfig", "GRPOConfig", "RLOOConfig", "DPOConfig", "RewardConfig")
TRAINERS = ("PPOTrainer", "GRPOTrainer", "RLOOTrainer", "DPOTrainer", "RewardTrainer")
BASE_FIELDS = ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
               "seed", "max_grad_norm", "weight_decay", "output_dir", "max_steps", "lr_scheduler_type", "report_to",
               "use_cpu")
NOT_GIVEN = object()


def class_definitions(package_dir, pattern="*.py"):
    """{class name: (ast.ClassDef, path relative to the package's parent)} for every class in the files under
    package_dir whose name matches pattern; the first definition of a name wins (files in sorted order, those under
    an experimental/ folder last: trl 1.16.0's experimental/bema_for_ref_model defines a DPOTrainer of its own)."""
    found = {}
    for path in sorted(package_dir.rglob(pattern), key=lambda p: ("experimental" in p.parts, p)):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                found.setdefault(node.name, (node, path.relative_to(package_dir.parent).as_posix()))
    return found


def declared_default(value):
    """The default of `name: type = value` -> a JSON value, {"expr": source} or NOT_GIVEN (a required field)."""
    if value is None:
        return NOT_GIVEN
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "field":
        keywords = {k.arg: k.value for k in value.keywords}
        if "default" in keywords:
            value = keywords["default"]
        elif isinstance(keywords.get("default_factory"), ast.Lambda):
            value = keywords["default_factory"].body
        elif "default_factory" in keywords:
            return {"expr": ast.unparse(keywords["default_factory"]) + "()"}
        else:
            return NOT_GIVEN
    try:
        return ast.literal_eval(value)
    except ValueError:
        return {"expr": ast.unparse(value)}


def own_fields(node, path, only=None):
    """[(name, entry)] of the annotated fields declared in a class body, in order; `only` keeps those names."""
    fields = []
    for statement in node.body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            name = statement.target.id
            if only is not None and name not in only:
                continue
            entry = {"source": f"{path}:{statement.lineno}"}
            default = declared_default(statement.value)
            if default is NOT_GIVEN:
                entry["required"] = True
            else:
                entry["default"] = default
            fields.append((name, entry))
    return fields


def config_fields(name, trl_classes, base_classes):
    """The fields of one TRL config class, its bases' first (TRL's, then BASE_FIELDS of transformers'), so that a
    redeclared field keeps the subclass's default. -> (bases, {field: entry})."""
    chain, current = [], name
    while current in trl_classes:
        chain.append(current)
        bases = [ast.unparse(b) for b in trl_classes[current][0].bases]
        current = bases[0] if bases else None
    bases = chain[1:] + ([current] if current else [])
    fields = {}
    if current in base_classes:
        node, path = base_classes[current]
        fields.update(own_fields(node, path, only=BASE_FIELDS))
    for cls in reversed(chain):
        node, path = trl_classes[cls]
        for field_name, entry in own_fields(node, path):
            fields.pop(field_name, None)        # a redeclared field moves to where the subclass declares it
            fields[field_name] = entry
    return bases, fields


def logged_metrics(node, path):
    """{metric name: "path:line" of its first write} of the literal keys a trainer class writes into its metrics:
    `self._metrics[mode]["kl"]` (1.16.0's trainers) or `metrics["objective/kl"]` (1.12.0's PPOTrainer). Names built
    with an f-string (rewards/<func name>/mean) are left out: their text depends on the run."""
    found = {}
    for sub in ast.walk(node):
        if (isinstance(sub, ast.Subscript) and isinstance(sub.slice, ast.Constant) and isinstance(sub.slice.value, str)
                and ast.unparse(sub.value).split("[")[0].split(".")[-1] in ("_metrics", "metrics")
                and ast.unparse(sub.value) != "self._metrics"):      # self._metrics["train"] is a dict of metrics
            found.setdefault(sub.slice.value, (sub.lineno, f"{path}:{sub.lineno}"))
    return {name: where for name, (_, where) in sorted(found.items(), key=lambda item: item[1][0])}


def init_parameters(node):
    """The parameter names of a class's own __init__, self left out, in order (what a script may pass)."""
    for statement in node.body:
        if isinstance(statement, ast.FunctionDef) and statement.name == "__init__":
            arguments = statement.args
            return [a.arg for a in arguments.posonlyargs + arguments.args + arguments.kwonlyargs][1:]
    return []


def dist_version(root, distribution):
    """The Version: line of root/<distribution>-*.dist-info/METADATA, or None."""
    for metadata in sorted(root.glob(f"{distribution}-*.dist-info/METADATA")):
        for line in metadata.read_text(encoding="utf-8").splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return None


def extract(trl_root, transformers_root=None):
    """The JSON document for an unpacked trl wheel (and, for BASE_FIELDS, an unpacked transformers wheel)."""
    trl_classes = class_definitions(trl_root / "trl")
    # TrainingArguments lives in transformers/training_args.py; reading only that file spares parsing ~2,000 others
    base_classes = (class_definitions(transformers_root / "transformers", "training_args.py")
                    if transformers_root else {})
    classes = {}
    for name in CLASSES:
        if name not in trl_classes:
            classes[name] = None
            continue
        bases, fields = config_fields(name, trl_classes, base_classes)
        node, path = trl_classes[name]
        classes[name] = {"source": f"{path}:{node.lineno}", "bases": bases, "fields": fields}
    return {
        "about": "Field names and declared defaults (before __post_init__) of TRL's config dataclasses, read with "
                 "ast by scripts/trl_fields.py; see its docstring for the exact command and the wheels' sha256.",
        "trl_version": dist_version(trl_root, "trl"),
        "transformers_version": dist_version(transformers_root, "transformers") if transformers_root else None,
        "base_fields_from_transformers": list(BASE_FIELDS) if transformers_root else [],
        "classes": classes,
        "metrics": {name: ({"source": f"{trl_classes[name][1]}:{trl_classes[name][0].lineno}",
                            "init_parameters": init_parameters(trl_classes[name][0]),
                            "names": logged_metrics(*trl_classes[name])} if name in trl_classes else None)
                    for name in TRAINERS},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trl_dir", type=Path, help="an unpacked trl wheel: the folder holding trl/")
    parser.add_argument("--transformers", type=Path, default=None,
                        help="an unpacked transformers wheel, for TrainingArguments' BASE_FIELDS")
    parser.add_argument("--out", type=Path, default=None, help="the JSON file to write (default: stdout)")
    args = parser.parse_args(argv)
    for flag, root, package in (("trl_dir", args.trl_dir, "trl"), ("--transformers", args.transformers,
                                                                      "transformers")):
        if root is not None and not (root / package / "__init__.py").is_file():
            parser.exit(2, f"trl_fields.py: {flag} {root} holds no {package}/__init__.py; pass the folder an "
                           f"unpacked {package} wheel was extracted to\n")
    text = json.dumps(extract(args.trl_dir, args.transformers), indent=1) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
