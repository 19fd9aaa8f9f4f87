"""Experiment grids: a TOML file (or a dict) expanded into the points of a sweep.

A grid file has two tables (both optional; every key has a default)::

    name = "batch-size study"            # optional description
    study = "batch"                      # optional: the report `dlg-jax experiment` writes (STUDIES)

    [budget]                             # what every point may spend
    targets = 2                          # attack the first N batches of the dataset
    restarts = 4
    iterations = 1000

    [axes]                               # lists: the grid is their product (the first key varies slowest)
    attack = ["dlg", "ig", "dlg-cyclic"] # a preset or a variant (dlg_jax.attack.presets)
    model = ["lenet", "resnet20-sigmoid-bn", {name = "lenet", num_classes = 100}]
    dataset = ["digits", {name = "mnist", data_dir = "~/tfds"}, {name = "faces", image_size = 64}]
    batch_size = [1, 2, 4]
    labels = ["joint", "analytic"]
    defense = ["none", "prune", {name = "gaussian", strength = [1e-6, 1e-4]}]
    clients = [1, 4]                     # threat model: K clients, FedAvg's S local steps
    local_steps = [1, 2]
    image_size = [16, 32]                # every dataset resized to S x S
    seed = [0, 1]

    [quick]                              # optional: what --quick replaces (a smoke-test budget)
    budget = {targets = 1, iterations = 100}
    axes = {batch_size = [1, 2]}

    [[grids]]                            # optional: the union of several grids, each with its own
    axes = {clients = [1, 2, 4]}         # budget / axes / quick on top of the tables above
    [[grids]]
    axes = {local_steps = [2, 5]}

A key of ``[axes]`` given a single value (not a list) is one value at every point. ``[budget]`` keys
(:data:`BUDGET_KEYS`) may also be axes (``iterations = [300, 3000]``). A ``defense`` entry is a name (with
all its :data:`~dlg_jax.victim.defenses.DEFAULT_STRENGTHS`) or a table ``{name, strength = x or [x, ...],
options...}``; ``model`` entries are a model spec (:func:`~dlg_jax.models.parse_model_spec`) or a table
``{name, options...}`` (:data:`MODEL_OPTIONS`), ``dataset`` entries a name or a table ``{name, options...}``.
The threat model's keys (:data:`THREAT_KEYS`: ``clients``, ``aggregate``, ``local_steps``, ``local_lr``)
compose with every defense as :func:`dlg_jax.pipeline.run_dlg` composes them. A key given in a later
table replaces the same key of an earlier one (``[[grids]]`` over the top tables, ``quick`` over both,
the caller's overrides last), whether it was a budget or an axis there.

The studies shipped with the package are such files (``dlg_jax/experiments/specs/NAME.toml``,
:func:`spec_names`, :func:`load_spec`). A :class:`Point` is everything that determines one attack's
numbers; its :attr:`Point.id` (a hash of :meth:`Point.key`) is its identity in the results store. Bad
input raises :class:`~dlg_jax.errors.DLGInputError` naming the file, the line and the key.
"""

import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import tomllib
from typing import Any

from dlg_jax.attack.engine import AttackConfig, RunOptions
from dlg_jax.attack.memory import parse_bytes
from dlg_jax.attack.presets import ATTACK_NAMES, attack_preset
from dlg_jax.attack.solvers import SolverConfig
from dlg_jax.data.sentences import SENTENCE_SETS
from dlg_jax.errors import DLGInputError, check_choice, quote
from dlg_jax.models import MODEL_NAMES, parse_model_spec
from dlg_jax.models.bert import TEXT_MODELS
from dlg_jax.victim.defenses import DEFAULT_STRENGTHS, make_defense
from dlg_jax.victim.threat_models import ThreatModel

POINT_KEYS = ("attack", "model", "dataset", "batch_size", "defense", "targets")
SOLVER_KEYS = ("solver", "history_size", "learning_rate")
# ThreatModel fields: K clients and FedAvg's S local steps (dlg_jax.victim.threat_models)
THREAT_KEYS = ("clients", "aggregate", "local_steps", "local_lr")
# AttackConfig fields a grid may set (precision and any later scalar field join automatically).
CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(AttackConfig) if f.name not in ("solver", "layer_weights", "box"))
# RunOptions fields a grid may set: how its points run, not part of their identity (points keep no snapshots).
RUN_KEYS = tuple(f.name for f in dataclasses.fields(RunOptions) if f.name != "snapshots")
BUDGET_KEYS = ("targets", "restarts", "iterations", "tolerance", "chunk_size", "devices", "block", "memory_budget",
               *SOLVER_KEYS)
# Data options that may also be axes of their own (every dataset of the point at each value).
DATA_AXIS_KEYS = ("image_size",)
AXIS_KEYS = tuple(dict.fromkeys((*POINT_KEYS, *CONFIG_KEYS, *RUN_KEYS, *SOLVER_KEYS, *THREAT_KEYS, *DATA_AXIS_KEYS)))
TOP_KEYS = ("name", "study", "budget", "axes", "quick", "grids")
PART_KEYS = ("budget", "axes", "quick")
MODEL_OPTIONS = ("activation", "norm", "strides", "init", "num_classes")
# text models (a masked-LM BERT, dlg_jax.text): its vocabulary and the attack's dummy (default: embeddings)
TEXT_MODEL_OPTIONS = ("vocabulary_size", "dummy")
DATA_OPTIONS = ("split", "data_dir", "image_size")
DEFAULTS = {"attack": "dlg", "model": "lenet", "dataset": "colour", "batch_size": 1, "defense": "none",
            "targets": 1}

_INT_KEYS = {"batch_size", "targets", "restarts", "iterations", "chunk_size", "devices", "block", "history_size",
             "clients", "local_steps", "image_size"}
_NUMBER_KEYS = {"tolerance", "tv_weight", "learning_rate", "local_lr"}


@dataclasses.dataclass(frozen=True)
class Point:
    """One point of a grid: the attack ``config`` on the first ``targets`` batches of ``batch_size``
    images of ``dataset``, seen through ``defense`` at ``strength`` by ``model``; ``threat``: the
    :class:`~dlg_jax.victim.threat_models.ThreatModel` fields that differ from one client's one step.
    ``run``: how it runs (chunks, devices, memory budget), which is not part of its identity."""

    attack: str
    model: str
    dataset: str
    batch_size: int
    targets: int
    defense: str
    strength: Any
    config: AttackConfig
    model_options: tuple[tuple[str, Any], ...] = ()
    data_options: tuple[tuple[str, Any], ...] = ()
    defense_options: tuple[tuple[str, Any], ...] = ()
    threat: tuple[tuple[str, Any], ...] = ()
    run: RunOptions = RunOptions(snapshots=0)

    @property
    def text(self) -> bool:
        """A text point: a masked-LM BERT (:mod:`dlg_jax.text`) on a sentence set (:mod:`dlg_jax.data.sentences`)."""
        return self.model in TEXT_MODELS

    def key(self) -> dict:
        """Everything that determines this point's numbers, as plain JSON data (sorted keys)."""
        config = dataclasses.asdict(self.config)
        if not config["coarse"]:  # no coarse stages: the key (and id) of a point from before they existed
            del config["coarse"], config["coarse_iterations"]
        return json.loads(json.dumps({
            "attack": self.attack, "model": self.model, "model_options": dict(self.model_options),
            "dataset": self.dataset, "data_options": dict(self.data_options), "batch_size": self.batch_size,
            "targets": self.targets, "defense": self.defense, "strength": self.strength,
            "defense_options": dict(self.defense_options), "config": config,
            **({"threat": dict(self.threat)} if self.threat else {}),  # absent for one client's step
        }, sort_keys=True))

    @property
    def id(self) -> str:
        """:func:`key_id` of :meth:`key`: equal points have equal ids on every machine."""
        return key_id(self.key())

    @property
    def expected_rows(self) -> int:
        """Rows of a finished point: one per target."""
        return self.targets


def key_id(key: dict) -> str:
    """16 hex digits of the SHA-256 of ``key`` as JSON with sorted keys."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Grid:
    """``points`` of a grid file; ``name``: its description, ``study``: the report it asks for (``""``: none)."""

    name: str
    points: tuple[Point, ...]
    study: str = ""


# ---------------------------------------------------------------------------------------------------
# Where a key sits in the file (tomllib reports no positions for valid TOML).

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.\-" ]+?)\s*=""")


def key_lines(text: str) -> dict[tuple[str, str], int]:
    """``{(table, key): line}`` (1-based) for every ``key = ...`` line of a TOML text; top-level keys
    have table ``""``; dotted keys (``budget.restarts = 2``) count as ``("budget", "restarts")``."""
    lines, table = {}, ""
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            table = header.group(1).replace('"', "").replace("'", "").replace(" ", "")
            parent, _, name = table.rpartition(".")
            lines.setdefault((table, ""), number)
            lines.setdefault((parent, name), number)
            continue
        key = _KEY.match(line)
        if key:
            parts = [p.strip().strip("\"'") for p in key.group(1).split(".")]
            path = [p for p in (table.split(".") if table else [])] + parts
            lines.setdefault((".".join(path[:-1]), path[-1]), number)
    return lines


class _Where:
    """Turns a (table, key) into ``"grid file F line N: table.key"`` for error messages."""

    def __init__(self, source: str, lines: dict):
        self.source, self.lines = source, lines

    def __call__(self, table: str, key: str = "") -> str:
        line = self.lines.get((table, key)) or self.lines.get((table, ""))
        name = ".".join(p for p in (table, key) if p)
        at = f" line {line}" if line else ""
        return f"{self.source}{at}: {name}" if name else f"{self.source}{at}"


# ---------------------------------------------------------------------------------------------------
# Values.

def _check_type(key: str, value) -> Any:
    """``value`` of key ``key`` if its type is right (bool is never a number), else DLGInputError."""
    if key in _INT_KEYS or key == "seed":
        if isinstance(value, bool) or not isinstance(value, int) or (key != "seed" and value < 1):
            raise DLGInputError(f"must be an integer{'' if key == 'seed' else ' >= 1'}, got {value!r}")
    elif key in _NUMBER_KEYS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DLGInputError(f"must be a finite number, got {quote(value)}")
        return float(value)
    elif key == "memory_budget":
        return parse_bytes(value)
    elif key not in ("model", "dataset", "defense") and not isinstance(value, str):
        raise DLGInputError(f"must be a string, got {value!r}")
    return value


def _named(key: str, value, names, options: tuple[str, ...]) -> tuple[str, tuple]:
    """A ``"name"`` or ``{name = ..., option = ...}`` entry as ``(name, sorted options)``."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or "name" not in value:
        raise DLGInputError(f"must be a name or a table {{name = ..., ...}}, got {value!r}")
    check_choice(key, value["name"], names)
    unknown = sorted(set(value) - {"name", *options})
    if unknown:
        raise DLGInputError(f"unknown option {unknown[0]!r} of {key} {value['name']!r}; allowed: "
                            f"{', '.join(options) or 'none'}")
    return value["name"], tuple(sorted((k, v) for k, v in value.items() if k != "name"))


def _model(value) -> tuple[str, tuple]:
    """A ``model`` entry (a spec ``"resnet20-sigmoid"`` or a table ``{name = spec, options...}``; a text
    model's name) as ``(name, sorted build options)``."""
    name = value.get("name") if isinstance(value, dict) else value
    if name in TEXT_MODELS:
        return _named("model", value, TEXT_MODELS, TEXT_MODEL_OPTIONS)
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        value = dict(value)
        value["name"], spec_options = parse_model_spec(value["name"])
        value = {**spec_options, **value}
    elif isinstance(value, str):
        name, spec_options = parse_model_spec(value)
        value = {"name": name, **spec_options}
    name, options = _named("model", value, MODEL_NAMES, MODEL_OPTIONS)
    classes = dict(options).get("num_classes")
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 2):
        raise DLGInputError(f"num_classes must be an integer >= 2, got {classes!r}")
    return name, options


def _defenses(value) -> list[tuple[str, Any, tuple]]:
    """A ``defense`` entry as its settings ``(name, strength, options)``, each checked by building it."""
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or "name" not in value:
        raise DLGInputError(f"must be a defense name or a table {{name = ..., strength = ...}}, got {value!r}")
    options = {k: v for k, v in value.items() if k not in ("name", "strength")}
    strengths = value.get("strength", DEFAULT_STRENGTHS.get(value["name"], (None,)))
    settings = []
    for strength in strengths if isinstance(strengths, list | tuple) else [strengths]:
        built = make_defense(value["name"], strength, **options)
        settings.append((built.name, built.strength, built.options))
    return settings


def _values(key: str, value) -> list:
    """The list of values of axis ``key`` given as ``value`` (a list, or one value), each checked."""
    entries = value if isinstance(value, list) else [value]
    if not entries:
        raise DLGInputError("is an empty list; give at least one value")
    out = []
    for entry in entries:
        if key == "defense":
            out.extend(_defenses(entry))
        elif key == "model":
            out.append(_model(entry))
        elif key == "dataset":
            from dlg_jax.data.datasets import dataset_names

            out.append(_named("dataset", entry, (*dataset_names(), *SENTENCE_SETS), DATA_OPTIONS))
        else:
            entry = _check_type(key, entry)
            if key == "attack":
                check_choice("attack", entry, ATTACK_NAMES)
            elif key in CONFIG_KEYS:
                AttackConfig(**{key: entry})  # the field's own checks
            elif key in RUN_KEYS:
                RunOptions(**{key: entry})
            elif key in SOLVER_KEYS:
                SolverConfig(**{("name" if key == "solver" else key): entry})
            elif key in THREAT_KEYS:
                ThreatModel(**{key: entry})
            out.append(entry)
    return list(dict.fromkeys(out))


def point_config(attack: str, values: dict, text: bool = False) -> AttackConfig:
    """The :class:`AttackConfig` of preset ``attack`` with the config and solver keys of ``values``
    on top (a new ``solver`` name starts from that solver's defaults); ``text``: the
    text attack's settings (:func:`dlg_jax.text.text_attack_config`; ``attack`` must be ``dlg``)."""
    settings = {k: v for k, v in values.items() if k in CONFIG_KEYS}
    if text:
        from dlg_jax.text import text_attack_config

        if attack != "dlg":
            raise DLGInputError(f"attack {attack!r} is not a text attack; text models take attack 'dlg'")
        config = text_attack_config(**settings)
    else:
        config = attack_preset(attack, **settings)
    solver = {("name" if k == "solver" else k): v for k, v in values.items() if k in SOLVER_KEYS}
    if solver.get("name", config.solver.name) != config.solver.name:
        return dataclasses.replace(config, solver=SolverConfig(**solver))
    return dataclasses.replace(config, solver=dataclasses.replace(config.solver, **solver)) if solver else config


def expand(axes: dict, budget: dict | None = None, *, name: str = "", where=None) -> Grid:
    """The grid of ``axes`` (``{key: value or [values]}``) with ``budget`` (``{key: value}``) at every
    point; ``where(table, key)`` names a key in error messages. Every point is built (so checked)."""
    where = where or (lambda table, key="": f"{table}.{key}" if key else table)
    budget = dict(budget or {})
    for key in budget:
        if key not in BUDGET_KEYS:
            raise DLGInputError(f"{where('budget', key)}: unknown key {key!r}; allowed: {', '.join(BUDGET_KEYS)}")
        if key in axes:
            raise DLGInputError(f"{where('axes', key)}: {key!r} is given in [budget] too; give it once")
    lists = {}
    for key, value in {**{k: [v] for k, v in budget.items()}, **axes}.items():
        table = "budget" if key in budget else "axes"
        if key not in AXIS_KEYS:
            raise DLGInputError(f"{where(table, key)}: unknown key {key!r}; allowed: {', '.join(AXIS_KEYS)}")
        try:
            lists[key] = _values(key, value)
        except DLGInputError as error:
            raise DLGInputError(f"{where(table, key)}: {error}") from None
    for key, default in DEFAULTS.items():
        lists.setdefault(key, _values(key, default))
    keys = list(lists)
    one_step = ThreatModel()  # threat-model values equal to its defaults stay out of a point's identity
    points = []
    for combination in itertools.product(*(lists[k] for k in keys)):
        values = dict(zip(keys, combination))
        (model, model_options), (dataset, data_options) = values["model"], values["dataset"]
        defense, strength, defense_options = values["defense"]
        text = model in TEXT_MODELS
        if text != (dataset in SENTENCE_SETS):
            raise DLGInputError(f"{where('axes', 'dataset')}: model {model!r} cannot read dataset {dataset!r}: text "
                                f"models ({', '.join(TEXT_MODELS)}) read sentence sets ({', '.join(SENTENCE_SETS)}), "
                                "image models image datasets")
        try:
            config = point_config(values["attack"], values, text)
        except DLGInputError as error:
            raise DLGInputError(f"{where('axes')}: {error}") from None
        threat = tuple((k, values[k]) for k in THREAT_KEYS if k in values and values[k] != getattr(one_step, k))
        if any(k in values for k in DATA_AXIS_KEYS):
            data_options = tuple(sorted({**dict(data_options), **{k: values[k] for k in DATA_AXIS_KEYS
                                                                   if k in values}}.items()))
        run = RunOptions(snapshots=0, **{k: values[k] for k in RUN_KEYS if k in values})
        points.append(Point(values["attack"], model, dataset, values["batch_size"], values["targets"], defense,
                            strength, config, model_options, data_options, defense_options, threat, run))
    unique = list({p.id: p for p in points}.values())
    return Grid(name, tuple(unique))


def _table(where, table: str, value, keys: tuple[str, ...]) -> dict:
    """``value`` if it is a table whose keys are all in ``keys``, else DLGInputError."""
    if not isinstance(value, dict):
        raise DLGInputError(f"{where(table)}: must be a table, got {value!r}")
    for key in value:
        if key not in keys:
            raise DLGInputError(f"{where(table, key)}: unknown key {key!r}; allowed: {', '.join(keys)}")
    return value


def _layer(budget: dict, axes: dict, layer_budget: dict, layer_axes: dict) -> tuple[dict, dict]:
    """``budget`` and ``axes`` with a later layer's keys on top (a key moves between them if it must)."""
    budget = {k: v for k, v in budget.items() if k not in layer_axes}
    axes = {k: v for k, v in axes.items() if k not in layer_budget}
    return {**budget, **layer_budget}, {**axes, **layer_axes}


def parse_grid(text: str, source: str = "grid", *, quick: bool = False, budget: dict | None = None,
               axes: dict | None = None) -> Grid:
    """The :class:`Grid` of a TOML text (see the module docstring); ``source`` names it in errors.
    ``quick``: apply its ``quick`` tables; ``budget`` and ``axes``: the caller's overrides, on top of all
    (an axis the file sets in some of its ``[[grids]]`` is replaced in those only: ``clients = [2]`` changes
    the grid of clients, not the one of local steps)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise DLGInputError(f"{source}: not valid TOML: {error}") from None
    where = _Where(source, key_lines(text))
    _table(where, "", document, TOP_KEYS)
    for key in ("name", "study"):
        if not isinstance(document.get(key, ""), str):
            raise DLGInputError(f"{where('', key)}: must be a string, got {document[key]!r}")
    study = document.get("study", "")
    if study and study not in STUDIES:
        raise DLGInputError(f"{where('', 'study')}: unknown study {quote(study)}; allowed: {', '.join(STUDIES)}")
    parts = document.get("grids", [{}])
    if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) for p in parts):
        raise DLGInputError(f"{where('', 'grids')}: must be an array of tables [[grids]], got {parts!r}")

    def tables(layer, table):
        layer = _table(where, table, layer, PART_KEYS)
        return (_table(where, f"{table}.budget" if table else "budget", layer.get("budget", {}), AXIS_KEYS),
                _table(where, f"{table}.axes" if table else "axes", layer.get("axes", {}), AXIS_KEYS),
                _table(where, f"{table}.quick" if table else "quick", layer.get("quick", {}), ("budget", "axes")))

    top_budget, top_axes, top_quick = tables({k: v for k, v in document.items() if k in PART_KEYS}, "")
    merged = []
    for part in parts:
        part_budget, part_axes, part_quick = tables(part, "grids")
        layers = [(part_budget, part_axes)]
        if quick:
            layers += [(top_quick.get("budget", {}), top_quick.get("axes", {})),
                       (part_quick.get("budget", {}), part_quick.get("axes", {}))]
        part_budget, part_axes = top_budget, top_axes
        for layer_budget, layer_axes in layers:
            part_budget, part_axes = _layer(part_budget, part_axes, layer_budget, layer_axes)
        merged.append((part_budget, part_axes))
    present = {k for part_budget, part_axes in merged for k in (*part_budget, *part_axes)}
    points = []
    for part_budget, part_axes in merged:
        replaced = {k: v for k, v in (axes or {}).items() if k in part_budget or k in part_axes or k not in present}
        part_budget, part_axes = _layer(part_budget, part_axes, budget or {}, replaced)
        points += expand(part_axes, part_budget, where=where).points
    if not quick and (top_quick or any("quick" in part for part in parts)):
        parse_grid(text, source, quick=True, budget=budget, axes=axes)  # a bad quick table is found either way
    return Grid(document.get("name", ""), tuple({p.id: p for p in points}.values()), study)


def load_grid(path: str | os.PathLike, **overrides) -> Grid:
    """The :class:`Grid` of the TOML file at ``path`` (``overrides``: those of :func:`parse_grid`)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise DLGInputError(f"cannot read grid file {path!r}: {error.strerror}") from None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise DLGInputError(f"grid file {path!r} is not UTF-8 text") from None
    return parse_grid(text, f"grid file {path}", **overrides)


# ---------------------------------------------------------------------------------------------------
# The studies shipped with the package: grid files in dlg_jax/experiments/specs/.

SPEC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs")
# The reports a grid file may ask for (dlg_jax.experiments.studies writes them).
STUDIES = ("labels", "batch", "compare", "threat", "resolution", "defenses", "text", "sweep")


def spec_names() -> tuple[str, ...]:
    """The names of the shipped studies (``dlg-jax experiment NAME``), sorted."""
    return tuple(sorted(name[:-5] for name in os.listdir(SPEC_DIR) if name.endswith(".toml")))


def spec_path(name: str) -> str:
    """The grid file of shipped study ``name``, or ``name`` itself when it is a path to a ``.toml`` file."""
    if name.endswith(".toml"):
        return name
    check_choice("experiment", name, spec_names())
    return os.path.join(SPEC_DIR, f"{name}.toml")


def load_spec(name: str, **overrides) -> Grid:
    """:func:`load_grid` of :func:`spec_path` ``(name)``."""
    return load_grid(spec_path(name), **overrides)
