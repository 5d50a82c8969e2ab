"""Embedded NL-RX-style dataset: a seeded grammar of (description, regex) with paraphrases.

A regex is a small tree; each node renders both its NL-RX regex and an English description::

    atom     a letter [A-Za-z] | a capital letter [A-Z] | a lower-case letter [a-z]
             | a number [0-9] | a vowel [AEIOUaeiou] | a character . | the string 'dog' dog
    seq      X followed by Y      X.*Y.*            (atoms only)
             X before Y           (X).*(Y).*
    and/or   X, Y, and Z          (X)&(Y)&(Z)       either X, Y, or Z   (X)|(Y)|(Z)
    repeat   X, 3 or more times   (X){3,}           X at least once (X)+   X, zero or more times (X)*
    context  containing X .*X.*   starting with X (X)(.*)   ending with X (.*)(X)
             not having X ~(X)    words with X \\bX\\b

Descriptions follow the wording of NL-RX-SYNTH (``lines with ...``); paraphrases swap in
synonyms (``a digit``, ``then``, ``beginning with`` ...).  Train and test regexes are
disjoint by construction: a regex belongs to ``test`` iff a hash of it falls in the test
bucket (``TEST_PERCENT``), whatever the seed or size.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

SYSTEM_PROMPT = "Convert natural language to regular expression."
TEST_PERCENT = 20

CLASSES = {  # name: (regex, canonical description, paraphrases)
    "letter": ("[A-Za-z]", "a letter", ["an alphabetic character", "a letter of the alphabet"]),
    "capital": ("[A-Z]", "a capital letter", ["an uppercase letter", "an upper-case letter", "a capital"]),
    "lower": ("[a-z]", "a lower-case letter", ["a lowercase letter", "a small letter"]),
    "number": ("[0-9]", "a number", ["a digit", "a numeral"]),
    "vowel": ("[AEIOUaeiou]", "a vowel", ["a vowel letter"]),
    "char": (".", "a character", ["any character", "a symbol"]),
}
CLASS_WEIGHTS = {"letter": 3, "capital": 3, "lower": 3, "number": 2, "vowel": 2, "char": 2}
WORDS = {"dog": 20, "truck": 6, "ring": 2, "lake": 1}
SYN = {  # canonical first
    "with": ["with", "having", "that have", "which contain"],
    "followed by": ["followed by", "then", "and then"],
    "before": ["before", "preceding", "ahead of"],
    "least once": ["at least once", "one or more times", "once or more"],
    "zero": ["zero or more times", "any number of times", "optionally repeated"],
    "times": ["{n} or more times", "at least {n} times", "repeated {n} or more times"],
    "containing": ["containing", "that contain", "including"],
    "starting": ["starting with", "beginning with", "that start with"],
    "ending": ["ending with", "that end with", "finishing with"],
    "not": ["not having", "without", "that do not have"],
    "words": ["words with", "words having", "words that contain"],
    "either": ["either ", ""],
    "lines": ["lines", "lines", "strings", "rows"],
}


@dataclass
class Node:
    op: str          # atom|follow|before|and|or|rep|contains|starts|ends|not|words
    kids: tuple = ()
    atom: str = ""   # class name, or "'word'"
    n: int = -1      # rep: -1 -> +, 0 -> *, n >= 2 -> {n,}

    def regex(self) -> str:
        r = [k.regex() for k in self.kids]
        if self.op == "atom":
            return CLASSES[self.atom][0] if self.atom in CLASSES else self.atom.strip("'")
        if self.op == "follow":
            return f"{r[0]}.*{r[1]}.*"
        if self.op == "before":
            return f"({r[0]}).*({r[1]}).*"
        if self.op in ("and", "or"):
            return ("&" if self.op == "and" else "|").join(f"({x})" for x in r)
        if self.op == "rep":
            return f"({r[0]})" + {-1: "+", 0: "*"}.get(self.n, f"{{{self.n},}}")
        return {"contains": ".*{}.*", "starts": "({})(.*)", "ends": "(.*)({})", "not": "~({})",
                "words": "\\b{}\\b"}[self.op].format(r[0])

    def describe(self, rng: random.Random | None = None) -> str:
        """English description; ``rng=None`` gives the canonical NL-RX wording."""
        s = lambda key: SYN[key][0] if rng is None else rng.choice(SYN[key])  # noqa: E731
        d = [k.describe(rng) for k in self.kids]
        if self.op == "atom":
            if self.atom in CLASSES:
                _, canon, alts = CLASSES[self.atom]
                return canon if rng is None else rng.choice([canon] + alts)
            w = self.atom
            return f"the string {w}" if rng is None else rng.choice([f"the string {w}", f"the word {w}", w])
        if self.op in ("follow", "before"):
            return f"{d[0]} {s('followed by' if self.op == 'follow' else 'before')} {d[1]}"
        if self.op in ("and", "or"):
            conj = "and" if self.op == "and" else "or"
            if len(d) == 2:
                return f"{d[0]} {conj} {d[1]}"
            lead = s("either") if self.op == "or" else ""
            return f"{lead}{', '.join(d[:-1])}, {conj} {d[-1]}"
        if self.op == "rep":
            if self.n == -1:
                return f"{d[0]} {s('least once')}"
            if self.n == 0:
                return f"{d[0]}, {s('zero')}"
            return f"{d[0]}, {s('times').format(n=self.n)}"
        key = {"contains": "containing", "starts": "starting", "ends": "ending", "not": "not",
               "words": "words"}[self.op]
        return f"{s(key)} {d[0]}"


def _atom(rng: random.Random) -> Node:
    if rng.random() < 0.3:
        w = rng.choices(list(WORDS), weights=list(WORDS.values()))[0]
        return Node("atom", atom=f"'{w}'")
    return Node("atom", atom=rng.choices(list(CLASS_WEIGHTS), weights=list(CLASS_WEIGHTS.values()))[0])


def _distinct_atoms(rng, n):
    out, seen = [], set()
    while len(out) < n:
        a = _atom(rng)
        if a.atom not in seen:
            seen.add(a.atom)
            out.append(a)
    return out


def _rep(rng, kid):
    return Node("rep", (kid,), n=rng.choice([-1, -1, 0, 0, 2, 3, 4, 5, 6, 7]))


def _expr(rng: random.Random, depth: int) -> Node:
    """An inner expression; ``depth`` bounds the nesting of operators."""
    if depth == 0:
        return _atom(rng)
    op = rng.choices(["atom", "follow", "before", "and", "or", "rep", "ctx"],
                     weights=[1, 3, 4, 4, 4, 3, 2])[0]
    if op == "atom":
        return _atom(rng)
    if op == "follow":
        return Node("follow", tuple(_distinct_atoms(rng, 2)))
    if op in ("and", "or"):
        kids = _distinct_atoms(rng, rng.choice([2, 2, 3]))
        if depth > 1 and rng.random() < 0.3:
            kids[-1] = _expr(rng, depth - 1)
        return Node(op, tuple(kids))
    if op == "rep":
        return _rep(rng, _expr(rng, depth - 1) if rng.random() < 0.4 else _atom(rng))
    if op == "ctx":
        return Node(rng.choice(["contains", "starts", "ends"]), (_expr(rng, depth - 1),))
    second = _expr(rng, depth - 1) if rng.random() < 0.5 else _atom(rng)
    return Node("before", (_expr(rng, depth - 1), second))


def sample_tree(rng: random.Random) -> Node:
    """A whole-line pattern: an optional context (containing/starting/ending/not/words) over an expression."""
    top = rng.choices(["with", "contains", "starts", "ends", "not", "words"], weights=[10, 3, 3, 3, 4, 4])[0]
    inner = _expr(rng, 2)
    return inner if top == "with" else Node(top, (inner,))


def describe_line(tree: Node, rng: random.Random | None = None) -> str:
    """``lines with ...`` / ``lines containing ...`` description of a whole-line pattern."""
    lines = "lines" if rng is None else rng.choice(SYN["lines"])
    body = tree.describe(rng)
    if tree.op in ("contains", "starts", "ends", "not"):
        return f"{lines} {body}"
    w = "with" if rng is None else rng.choice(SYN["with"])
    return f"{lines} {w} {body}"


def split_of(regex: str) -> str:
    """``"test"`` for the hash bucket of held-out regexes, else ``"train"``."""
    h = int.from_bytes(hashlib.sha256(regex.encode()).digest()[:8], "little")
    return "test" if h % 100 < TEST_PERCENT else "train"


def _sample(rng: random.Random, split: str) -> Node:
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    while True:
        tree = sample_tree(rng)
        if split_of(tree.regex()) == split:
            return tree


def generate_pairs(n: int, seed: int = 0, *, split: str = "train", paraphrase: float = 0.0) -> list[dict]:
    """``n`` records ``{"description", "regex"}``; ``paraphrase`` = chance of a reworded description."""
    rng = random.Random(f"nlrx-pairs-{seed}-{split}")
    out = []
    for _ in range(n):
        tree = _sample(rng, split)
        desc = describe_line(tree, rng if rng.random() < paraphrase else None)
        out.append({"description": desc, "regex": tree.regex()})
    return out


def generate_groups(n: int, seed: int = 0, *, split: str = "train", views: int = 4,
                    with_regex: bool = False) -> list[dict]:
    """``n`` groups ``{"texts": [canonical, paraphrase, ...] (+ regex), "regex"}`` with distinct texts."""
    if views < 2:
        raise ValueError("a group needs at least 2 views")
    rng = random.Random(f"nlrx-groups-{seed}-{split}")
    out = []
    while len(out) < n:
        tree = _sample(rng, split)
        texts = [describe_line(tree)]
        for _ in range(8 * views):
            if len(texts) >= views:
                break
            t = describe_line(tree, rng)
            if t not in texts:
                texts.append(t)
        if len(texts) < 2:
            continue
        regex = tree.regex()
        out.append({"texts": texts + ([regex] if with_regex else []), "regex": regex})
    return out


def chat_record(description: str, regex: str) -> dict:
    """The chat-``messages`` record of NL-RX-SYNTH (same system prompt)."""
    return {"messages": [{"role": "system", "content": SYSTEM_PROMPT},
                         {"role": "user", "content": description},
                         {"role": "assistant", "content": regex}]}
