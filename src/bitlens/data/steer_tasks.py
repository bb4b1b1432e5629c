"""Small built-in in-context-learning tasks with deterministic answers, for `bitlens steer`.

Each task is a list of (input, answer) items shown in one neutral template, ``"input: <x> output: <y>"`` lines
joined by newlines, so a 0-shot prompt does not say what the task is: only the demonstrations do. The model's answer
is read as its next token after the final ``output:`` (its first answer token; for answers whose first token is a
bare space, such as SmolLM2's digits, the prompt ends with the space and the next token is read).

Accuracy over the label set: the prediction is the first answer token with the largest logit among the task's
distinct first answer tokens (two answers sharing a first token count as one label; ``number`` has a few: 1 vs 10-19).
Top-1: the argmax over the whole vocabulary equals the answer's first token.

Items are split once (seeded) into a demonstration pool, estimation queries and evaluation queries, disjoint, so no
query is ever among its own demonstrations and the steering vector is measured on items it was not estimated on.
Which tasks the embedded SmolLM2-135M really learns in context was measured (bench/steer_tasks.py, BENCHMARKS.md).
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import numpy as np

from ..io import BitlensError
from .icl_tasks import Example, ICLTask

SteerTaskName = Literal["first_letter", "upper", "antonym", "number", "capital", "spam", "party", "source"]
BUILTIN_TASKS: tuple[str, ...] = ("first_letter", "upper", "antonym", "number", "capital")
STEER_TASK_NAMES: tuple[str, ...] = get_args(SteerTaskName)

_WORDS = ("apple banana cherry dog elephant forest garden house island jacket kitchen lemon mountain night ocean "
          "pencil queen river sugar table umbrella village window yellow zebra bread candle doctor engine flower "
          "guitar hammer insect jungle kettle ladder mirror needle orange pillow rabbit silver tiger uncle violin "
          "wagon yogurt bottle carpet dragon eagle finger glove honey iron jelly king lamp monkey nest onion piano "
          "rocket summer tomato valley winter basket cloud desert feather ghost horse igloo jewel kite lizard magnet "
          "nurse owl parrot rain snake train vase whale").split()
_ANTONYMS = ("hot cold|big small|up down|fast slow|happy sad|light dark|open closed|early late|strong weak|rich poor|"
             "old young|high low|long short|hard soft|wet dry|full empty|clean dirty|loud quiet|thick thin|"
             "heavy light|inside outside|first last|true false|good bad|love hate|win lose|buy sell|push pull|"
             "begin end|black white|day night|north south|east west|left right|top bottom|front back|more less|"
             "always never|before after|above below|friend enemy|question answer|male female|alive dead|"
             "sweet sour|cheap expensive|safe dangerous|easy difficult|deep shallow|wide narrow|near far|"
             "awake asleep|accept reject|arrive leave|laugh cry|sharp dull|tall short|brave afraid|"
             "victory defeat|noisy silent").split("|")
_NUMBERS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
            "seventeen eighteen nineteen twenty").split()
_CAPITALS = ("France Paris|Germany Berlin|Italy Rome|Spain Madrid|Japan Tokyo|China Beijing|Russia Moscow|"
             "Egypt Cairo|Greece Athens|Portugal Lisbon|Austria Vienna|Poland Warsaw|Norway Oslo|Sweden Stockholm|"
             "Finland Helsinki|Denmark Copenhagen|Ireland Dublin|Belgium Brussels|Hungary Budapest|Turkey Ankara|"
             "Iran Tehran|Iraq Baghdad|Kenya Nairobi|Peru Lima|Chile Santiago|Cuba Havana|Thailand Bangkok|"
             "Vietnam Hanoi|Canada Ottawa|Australia Canberra|India Delhi|Mexico Mexico|Argentina Buenos|"
             "Colombia Bogota|Venezuela Caracas|Ukraine Kyiv|Romania Bucharest|Bulgaria Sofia|Serbia Belgrade|"
             "Czechia Prague|Switzerland Bern|Netherlands Amsterdam|Israel Jerusalem|Syria Damascus|"
             "Lebanon Beirut|Jordan Amman|Pakistan Islamabad|Afghanistan Kabul|Nepal Kathmandu|Indonesia Jakarta|"
             "Philippines Manila|Malaysia Kuala|Nigeria Abuja|Ghana Accra|Ethiopia Addis|Morocco Rabat|"
             "Scotland Edinburgh|England London|Wales Cardiff|Iceland Reykjavik|Croatia Zagreb|Cyprus Nicosia"
             ).split("|")


def builtin_items(name: str) -> list[tuple[str, str]]:
    """(input, answer) pairs of a built-in task, in a fixed order."""
    if name == "first_letter":
        return [(w, w[0]) for w in _WORDS]
    if name == "upper":
        return [(w, w.upper()) for w in _WORDS]
    if name == "antonym":
        pairs = [tuple(p.split()) for p in _ANTONYMS]
        both = dict(reversed([(a, b) for a, b in pairs] + [(b, a) for a, b in pairs]))  # first answer of an input wins
        return list(both.items())
    if name == "number":
        return [(w, str(i)) for i, w in enumerate(_NUMBERS)]
    if name == "capital":  # answers are the capital's first word (its first token is what is scored)
        return [tuple(p.split()) for p in _CAPITALS]
    raise BitlensError(f"unknown built-in task {name!r}; choose from {', '.join(BUILTIN_TASKS)}")


def builtin_task(name: str) -> ICLTask:
    """A built-in task as an ICLTask: every item is its own group, the labels are the distinct answers."""
    items = builtin_items(name)
    examples = [Example(x, y, f"{name}/{i}") for i, (x, y) in enumerate(items)]
    labels = list(dict.fromkeys(y for _, y in items))
    return ICLTask(name, "input:", "output:", labels, examples, source="built-in (bitlens.data.steer_tasks)")


class ItemSplit(NamedTuple):
    pool: list[Example]
    """Demonstrations are drawn from these only."""
    estimate: list[Example]
    """Queries whose prompts estimate the task vectors."""
    evaluate: list[Example]
    """Held-out queries on which steering is measured."""


def split_items(task: ICLTask, seed: int, n_estimate: int, n_evaluate: int, min_pool: int = 8) -> ItemSplit:
    """Disjoint pool / estimation / evaluation sets, split by group (an item for built-in tasks, a document for the
    corpus tasks): groups are shuffled once and dealt to evaluation first, then estimation, the rest to the pool.
    The pool keeps at least ``min_pool`` groups; when fewer groups remain than asked for, evaluation and estimation
    share them (half each), so a small task (``number``: 21 items) still runs, with fewer queries."""
    groups = sorted({e.group for e in task.examples})
    available = len(groups) - min_pool
    if 2 <= available < n_estimate + n_evaluate:
        n_evaluate = min(n_evaluate, max(1, available // 2))
        n_estimate = min(n_estimate, available - n_evaluate)
    rng = np.random.default_rng([seed, 17])
    order = [groups[i] for i in rng.permutation(len(groups))]
    by_group: dict[str, list[Example]] = {}
    for e in task.examples:
        by_group.setdefault(e.group, []).append(e)
    sides: list[list[Example]] = [[], []]
    cursor = 0
    for side, want in ((0, n_evaluate), (1, n_estimate)):
        while len(sides[side]) < want and cursor < len(order) - min_pool:
            sides[side].extend(by_group[order[cursor]])
            cursor += 1
        sides[side] = sides[side][:want]
    pool = [e for g in order[cursor:] for e in by_group[g]]
    if len(pool) < min_pool or not sides[0] or not sides[1]:
        raise BitlensError(f"task {task.name} has too few items ({len(task.examples)}) for a pool of {min_pool} and "
                           "estimation and evaluation queries")
    return ItemSplit(pool, sides[1], sides[0])


def sample_pool(pool: list[Example], k: int, rng: np.random.Generator) -> list[int]:
    """k distinct pool indices in random order (not label-balanced: built-in tasks have one label per item)."""
    if k > len(pool):
        raise BitlensError(f"k={k} demonstrations but the pool holds {len(pool)} items")
    return [int(i) for i in rng.choice(len(pool), size=k, replace=False)]
