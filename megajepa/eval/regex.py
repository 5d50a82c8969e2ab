"""NL-RX regular expressions -> minimal DFAs, and semantic equivalence.

Contract
--------
``regex_equivalent(a, b)`` is True iff regexes ``a`` and ``b`` accept the same set of lines
(whole-line match, like ``re.fullmatch``): the NL-RX literature's DFA metric. It raises
``RegexSyntaxError`` for input it cannot parse and ``RegexTooComplexError`` when an
automaton would exceed ``max_states``; both derive from ``RegexError``.

Dialect (the one NL-RX-SYNTH uses, with dk.brics.automaton precedence, loosest first)::

    a|b      union                      a&b      intersection
    ab       concatenation              a* a+ a? a{n} a{n,} a{n,m}   repetition
    ~a       complement (binds tighter than repetition: ~a* is (~a)*)
    (a)  ()  grouping, empty group = empty string
    [A-Za-z] [^0-9] .   character classes (. is any character)
    \\b \\B     word boundary / not a boundary (zero-width)
    \\d \\w \\s \\D \\W \\S   shorthand classes, \\<punct> a literal punctuation character
    anything else        a literal character (dog = d o g)

So ``\\b(x)|(y)\\b`` is ``(\\b(x))|((y)\\b)`` and ``\\b(x)&(y)\\b`` is ``(\\b(x))&((y)\\b)``.

Word characters are ASCII ``[A-Za-z0-9_]`` (Python's ``re.ASCII`` ``\\w``); the start and
the end of the line count as non-word. ``\\b`` holds between two positions whose word-ness
differs. The semantics is compositional and exact, also under ``&`` and ``~``: a
sub-expression denotes a set of triples ``(l, w, r)``: a string ``w`` together with the
word-ness ``l`` of the character before it and ``r`` of the one after it (what a ``\\b`` at
its edges looks at). ``~x`` is the complement of ``x``'s triples, ``x&y`` their
intersection, and a whole regex accepts ``w`` iff ``(0, w, 0)`` is in its set.

Construction
------------
1. Alphabet: the characters are partitioned into classes that no atom of either regex can
   tell apart (same membership in every atom, same word-ness), e.g. for ``dog|[0-9]``:
   ``{d} {o} {g} {0..9} {other word chars} {other non-word chars}``. Every DFA runs over
   these class ids, so it is exact for all strings.
2. Thompson construction of an epsilon-NFA whose epsilon edges may carry a guard, the set
   of allowed ``(prev word-ness, next word-ness)`` pairs (``\\b`` = {(0,1), (1,0)}).
3. Subset construction into a *context DFA*: a state is ``(prev word-ness, NFA state set)``;
   there are two start states (``l`` = 0, 1) and two acceptance vectors (``r`` = 0, 1).
4. ``&`` and ``~`` are done on context DFAs (product with both acceptance vectors;
   complement flips them), and the result is spliced back into the enclosing NFA with
   guarded entry and exit edges.
5. The top-level context DFA, read with ``l = r = 0``, is minimized with Hopcroft's
   algorithm and put in canonical form (states numbered in BFS order from the start,
   symbols in class order); two regexes are equivalent iff the canonical minimal DFAs are
   identical (``distinguishing_string`` gives a shortest counter-example otherwise).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

__all__ = [
    "RegexError", "RegexSyntaxError", "RegexTooComplexError", "parse", "regex_equivalent",
    "fullmatch", "distinguishing_string", "minimal_dfa", "DFA", "DEFAULT_MAX_STATES",
    "WORD_CHARS",
]

DEFAULT_MAX_STATES = 20_000
MAX_REPEAT = 1_000
WORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


class RegexError(ValueError):
    """Base class: the regex cannot be turned into a DFA."""


class RegexSyntaxError(RegexError):
    """The regex does not parse in the NL-RX dialect."""


class RegexTooComplexError(RegexError):
    """An automaton would exceed the state limit."""


# --------------------------------------------------------------------------- AST
@dataclass(frozen=True)
class Atom:
    """One character from a set: ``chars`` (or every character but ``chars`` if negated)."""
    chars: frozenset
    negated: bool = False

    def __contains__(self, ch: str) -> bool:
        return (ch in self.chars) != self.negated


@dataclass(frozen=True)
class Assert:
    """Zero-width assertion: allowed (prev word-ness, next word-ness) pairs."""
    allowed: frozenset


@dataclass(frozen=True)
class Concat:
    parts: tuple


@dataclass(frozen=True)
class Union:
    parts: tuple


@dataclass(frozen=True)
class Inter:
    parts: tuple


@dataclass(frozen=True)
class Compl:
    child: object


@dataclass(frozen=True)
class Repeat:
    child: object
    lo: int
    hi: Optional[int]  # None = unbounded


EPSILON = Concat(())
BOUNDARY = Assert(frozenset({(0, 1), (1, 0)}))
NON_BOUNDARY = Assert(frozenset({(0, 0), (1, 1)}))
_DIGITS = frozenset("0123456789")
_SPACES = frozenset(" \t\n\r\f\v")
_SHORTHANDS = {"d": Atom(_DIGITS), "D": Atom(_DIGITS, True), "w": Atom(WORD_CHARS),
               "W": Atom(WORD_CHARS, True), "s": Atom(_SPACES), "S": Atom(_SPACES, True)}
_SPECIAL = set("()[]{}|&~*+?.\\")


# ------------------------------------------------------------------------ parser
class _Parser:
    """Recursive descent over the grammar in the module docstring."""

    def __init__(self, text: str):
        self.s = text
        self.i = 0

    def error(self, msg: str) -> RegexSyntaxError:
        return RegexSyntaxError(f"{msg} at position {self.i} in {self.s!r}")

    def peek(self) -> Optional[str]:
        return self.s[self.i] if self.i < len(self.s) else None

    def parse(self):
        if not self.s:
            raise RegexSyntaxError("empty regex")
        node = self.union()
        if self.i != len(self.s):
            raise self.error(f"unexpected {self.s[self.i]!r}")
        return node

    def union(self):
        parts = [self.inter()]
        while self.peek() == "|":
            self.i += 1
            parts.append(self.inter())
        return parts[0] if len(parts) == 1 else Union(tuple(parts))

    def inter(self):
        parts = [self.concat()]
        while self.peek() == "&":
            self.i += 1
            parts.append(self.concat())
        return parts[0] if len(parts) == 1 else Inter(tuple(parts))

    def concat(self):
        parts = []
        while self.peek() is not None and self.peek() not in "|&)":
            parts.append(self.repeat())
        if not parts:
            raise self.error("empty operand")
        return parts[0] if len(parts) == 1 else Concat(tuple(parts))

    def repeat(self):
        node = self.unary()
        while True:
            c = self.peek()
            if c == "*":
                node, self.i = Repeat(node, 0, None), self.i + 1
            elif c == "+":
                node, self.i = Repeat(node, 1, None), self.i + 1
            elif c == "?":
                node, self.i = Repeat(node, 0, 1), self.i + 1
            elif c == "{":
                lo, hi = self.bounds()
                node = Repeat(node, lo, hi)
            else:
                return node

    def bounds(self):
        j = self.s.find("}", self.i)
        if j < 0:
            raise self.error("unclosed '{'")
        body = self.s[self.i + 1:j]
        lo_s, comma, hi_s = body.partition(",")
        if not lo_s.isdigit() or (hi_s and not hi_s.isdigit()):
            raise self.error(f"bad repetition {{{body}}}")
        lo = int(lo_s)
        hi = (int(hi_s) if hi_s else None) if comma else lo
        if hi is not None and hi < lo:
            raise self.error(f"bad repetition {{{body}}}: max < min")
        if max(lo, hi or 0) > MAX_REPEAT:
            raise RegexTooComplexError(f"repetition count over {MAX_REPEAT} in {self.s!r}")
        self.i = j + 1
        return lo, hi

    def unary(self):
        c = self.peek()
        if c == "~":
            self.i += 1
            return Compl(self.unary())
        if c == "(":
            self.i += 1
            if self.peek() == ")":
                self.i += 1
                return EPSILON
            node = self.union()
            if self.peek() != ")":
                raise self.error("missing ')'")
            self.i += 1
            return node
        if c == "[":
            return self.char_class()
        if c == ".":
            self.i += 1
            return Atom(frozenset(), True)
        if c == "\\":
            return self.escape()
        if c is None or c in _SPECIAL:
            raise self.error(f"unexpected {c!r}" if c else "unexpected end")
        self.i += 1
        return Atom(frozenset(c))

    def escape(self):
        if self.i + 1 >= len(self.s):
            raise self.error("trailing backslash")
        c = self.s[self.i + 1]
        self.i += 2
        if c == "b":
            return BOUNDARY
        if c == "B":
            return NON_BOUNDARY
        if c in _SHORTHANDS:
            return _SHORTHANDS[c]
        if c.isalnum():
            self.i -= 2
            raise self.error(f"unknown escape \\{c}")
        return Atom(frozenset(c))

    def char_class(self):
        self.i += 1
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        chars, first = set(), True
        while True:
            c = self.peek()
            if c is None:
                raise self.error("unclosed '['")
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            lo = self.class_char()
            if self.peek() == "-" and self.i + 1 < len(self.s) and self.s[self.i + 1] != "]":
                self.i += 1
                hi = self.class_char()
                if ord(hi) < ord(lo):
                    raise self.error(f"bad range {lo}-{hi}")
                chars.update(chr(o) for o in range(ord(lo), ord(hi) + 1))
            else:
                chars.add(lo)
        return Atom(frozenset(chars), negated)

    def class_char(self) -> str:
        c = self.s[self.i]
        if c == "\\":
            if self.i + 1 >= len(self.s):
                raise self.error("trailing backslash")
            c = self.s[self.i + 1]
            if c.isalnum():
                raise self.error(f"unsupported escape \\{c} in a class")
            self.i += 2
            return c
        self.i += 1
        return c


def parse(text: str):
    """Parse an NL-RX regex into an AST; raises ``RegexSyntaxError``."""
    if not isinstance(text, str):
        raise RegexSyntaxError(f"regex must be a string, got {type(text).__name__}")
    return _Parser(text).parse()


def _atoms(node, out: set) -> set:
    if isinstance(node, Atom):
        out.add(node)
    elif isinstance(node, (Concat, Union, Inter)):
        for p in node.parts:
            _atoms(p, out)
    elif isinstance(node, (Compl, Repeat)):
        _atoms(node.child, out)
    return out


# ---------------------------------------------------------------------- alphabet
class Alphabet:
    """Partition of all characters into classes no atom distinguishes.

    Class ``i`` has a representative character ``reps[i]`` and a word-ness ``word[i]``.
    Characters outside ASCII and the atoms' explicit sets all share the class of a
    non-ASCII representative, so the partition covers every possible character.
    """

    def __init__(self, atoms: Iterable[Atom], extra_chars: Iterable[str] = ()):
        self.atoms = sorted(set(atoms), key=lambda a: (a.negated, sorted(a.chars)))
        mentioned = set().union(*(a.chars for a in self.atoms)) if self.atoms else set()
        outside = next(chr(o) for o in range(0xA0, 0x110000) if chr(o) not in mentioned)
        universe = {chr(o) for o in range(128)} | mentioned | set(extra_chars) | {outside}
        groups: dict = {}
        for ch in sorted(universe):
            groups.setdefault(self.signature(ch), []).append(ch)
        self.sig_to_id = {}
        self.reps, self.word = [], []
        for sig, chars in groups.items():
            self.sig_to_id[sig] = len(self.reps)
            printable = [c for c in chars if c.isprintable() and c != " "]
            self.reps.append(printable[0] if printable else chars[0])
            self.word.append(int(sig[1]))

    def signature(self, ch: str):
        return tuple(ch in a for a in self.atoms), ch in WORD_CHARS

    def __len__(self) -> int:
        return len(self.reps)

    def symbol(self, ch: str) -> int:
        """The class of any character (every signature occurs in the universe)."""
        return self.sig_to_id[self.signature(ch)]

    def symbols(self, atom: Atom) -> frozenset:
        return frozenset(i for sig, i in self.sig_to_id.items()
                         if sig[0][self.atoms.index(atom)])


# ------------------------------------------------------------ guarded epsilon-NFA
class _NFA:
    """States are ints; ``moves[s]`` = [(symbol set, t)], ``eps[s]`` = [(guard or None, t)]."""

    def __init__(self, limit: int):
        self.moves, self.eps, self.limit = [], [], limit

    def new(self) -> int:
        if len(self.moves) >= self.limit:
            raise RegexTooComplexError(f"NFA over {self.limit} states")
        self.moves.append([])
        self.eps.append([])
        return len(self.moves) - 1


class _Compiler:
    """AST -> context DFAs (see the module docstring), with a shared state budget."""

    def __init__(self, alphabet: Alphabet, max_states: int):
        self.ab, self.max_states = alphabet, max_states
        self.cache: dict = {}

    # -- Thompson construction; returns (start, end) of a fragment in ``nfa``
    def fragment(self, nfa: _NFA, node):
        if isinstance(node, Atom):
            s, f = nfa.new(), nfa.new()
            nfa.moves[s].append((self.ab.symbols(node), f))
            return s, f
        if isinstance(node, Assert):
            s, f = nfa.new(), nfa.new()
            nfa.eps[s].append((node.allowed, f))
            return s, f
        if isinstance(node, Concat):
            s = f = nfa.new()
            for part in node.parts:
                ps, pf = self.fragment(nfa, part)
                nfa.eps[f].append((None, ps))
                f = pf
            return s, f
        if isinstance(node, Union):
            s, f = nfa.new(), nfa.new()
            for part in node.parts:
                ps, pf = self.fragment(nfa, part)
                nfa.eps[s].append((None, ps))
                nfa.eps[pf].append((None, f))
            return s, f
        if isinstance(node, Repeat):
            return self.repeat(nfa, node)
        return self.splice(nfa, self.context_dfa(node))  # Inter / Compl

    def repeat(self, nfa: _NFA, node: Repeat):
        s = f = nfa.new()
        for _ in range(node.lo):
            ps, pf = self.fragment(nfa, node.child)
            nfa.eps[f].append((None, ps))
            f = pf
        if node.hi is None:
            ps, pf = self.fragment(nfa, node.child)
            nfa.eps[f].append((None, ps))
            nfa.eps[pf].append((None, f))
        else:
            end = nfa.new()
            nfa.eps[f].append((None, end))
            for _ in range(node.hi - node.lo):
                ps, pf = self.fragment(nfa, node.child)
                nfa.eps[f].append((None, ps))
                nfa.eps[pf].append((None, end))
                f = pf
            f = end
        return s, f

    def splice(self, nfa: _NFA, cd: "_ContextDFA"):
        """Embed a context DFA as an NFA fragment with guarded entry/exit edges."""
        s, f = nfa.new(), nfa.new()
        ids = {}
        for d in range(cd.n):
            if not cd.dead[d]:
                ids[d] = nfa.new()
        for d, q in ids.items():
            by_target: dict = {}
            for a, t in enumerate(cd.delta[d]):
                if t in ids:
                    by_target.setdefault(t, set()).add(a)
            nfa.moves[q].extend((frozenset(syms), ids[t]) for t, syms in by_target.items())
            for r in (0, 1):
                if cd.accept[r][d]:
                    nfa.eps[q].append((frozenset({(0, r), (1, r)}), f))
        for l in (0, 1):
            if cd.start[l] in ids:
                nfa.eps[s].append((frozenset({(l, 0), (l, 1)}), ids[cd.start[l]]))
        return s, f

    # -- context DFAs
    def context_dfa(self, node) -> "_ContextDFA":
        key = node
        if key in self.cache:
            return self.cache[key]
        if isinstance(node, Inter):
            out = self.context_dfa(node.parts[0])
            for part in node.parts[1:]:
                out = _product(out, self.context_dfa(part), all, self.max_states)
        elif isinstance(node, Compl):
            out = self.context_dfa(node.child).complement()
        else:
            nfa = _NFA(self.max_states * 4)
            s, f = self.fragment(nfa, node)
            out = _determinize(nfa, s, f, self.ab, self.max_states)
        out = out.minimized()
        self.cache[key] = out
        return out


class _ContextDFA:
    """Complete DFA over class ids with two starts (l = 0, 1) and two acceptance vectors
    (r = 0, 1): it accepts the triple (l, w, r) iff ``accept[r][delta*(start[l], w)]``."""

    def __init__(self, delta, start, accept):
        self.delta, self.start, self.accept = delta, start, accept
        self.n = len(delta)
        # dead: no accepting state reachable (computed lazily by minimized()).
        self.dead = [False] * self.n

    def complement(self) -> "_ContextDFA":
        return _ContextDFA(self.delta, self.start,
                           [[not x for x in self.accept[0]], [not x for x in self.accept[1]]])

    def minimized(self) -> "_ContextDFA":
        labels = [(self.accept[0][d], self.accept[1][d]) for d in range(self.n)]
        block, nblocks = _hopcroft(self.delta, labels, reachable_from=list(self.start))
        delta = [None] * nblocks
        accept = [[False] * nblocks, [False] * nblocks]
        for d in range(self.n):
            b = block[d]
            if b is not None and delta[b] is None:
                delta[b] = [block[t] for t in self.delta[d]]
                accept[0][b], accept[1][b] = self.accept[0][d], self.accept[1][d]
        out = _ContextDFA(delta, [block[x] for x in self.start], accept)
        out.dead = _dead_states(delta, [a or b for a, b in zip(*accept)])
        return out


def _closure(nfa: _NFA, states, p: int, n: int) -> set:
    seen, stack = set(states), list(states)
    while stack:
        s = stack.pop()
        for guard, t in nfa.eps[s]:
            if t not in seen and (guard is None or (p, n) in guard):
                seen.add(t)
                stack.append(t)
    return seen


def _determinize(nfa: _NFA, start: int, final: int, ab: Alphabet, limit: int) -> _ContextDFA:
    """Subset construction; a DFA state is (prev word-ness, pre-closure NFA state set)."""
    k = len(ab)
    index: dict = {}
    keys: list = []

    def state(key) -> int:
        if key[1] == frozenset():
            key = (0, frozenset())  # one dead state
        if key not in index:
            if len(keys) >= limit:
                raise RegexTooComplexError(f"DFA over {limit} states")
            index[key] = len(keys)
            keys.append(key)
        return index[key]

    starts = [state((l, frozenset({start}))) for l in (0, 1)]
    delta, accept = [], [[], []]
    i = 0
    while i < len(keys):
        p, pre = keys[i]
        closed = [_closure(nfa, pre, p, n) for n in (0, 1)]
        moves = [{}, {}]
        for n in (0, 1):
            for s in closed[n]:
                for syms, t in nfa.moves[s]:
                    for a in syms:
                        if ab.word[a] == n:
                            moves[n].setdefault(a, set()).add(t)
        delta.append([state((ab.word[a], frozenset(moves[ab.word[a]].get(a, ()))))
                      for a in range(k)])
        for r in (0, 1):
            accept[r].append(final in closed[r])
        i += 1
    return _ContextDFA(delta, starts, accept)


def _product(x: _ContextDFA, y: _ContextDFA, combine, limit: int) -> _ContextDFA:
    index, pairs = {}, []

    def state(pair) -> int:
        if pair not in index:
            if len(pairs) >= limit:
                raise RegexTooComplexError(f"product DFA over {limit} states")
            index[pair] = len(pairs)
            pairs.append(pair)
        return index[pair]

    starts = [state((x.start[l], y.start[l])) for l in (0, 1)]
    delta, accept = [], [[], []]
    i = 0
    while i < len(pairs):
        a, b = pairs[i]
        delta.append([state((ta, tb)) for ta, tb in zip(x.delta[a], y.delta[b])])
        for r in (0, 1):
            accept[r].append(combine((x.accept[r][a], y.accept[r][b])))
        i += 1
    return _ContextDFA(delta, starts, accept)


def _dead_states(delta, accepting) -> list:
    """States from which no accepting state is reachable."""
    n = len(delta)
    rev = [[] for _ in range(n)]
    for d, row in enumerate(delta):
        for t in set(row):
            rev[t].append(d)
    alive = [bool(a) for a in accepting]
    stack = [d for d in range(n) if alive[d]]
    while stack:
        t = stack.pop()
        for d in rev[t]:
            if not alive[d]:
                alive[d] = True
                stack.append(d)
    return [not a for a in alive]


# -------------------------------------------------------------------- Hopcroft
def _hopcroft(delta, labels, reachable_from):
    """Hopcroft's partition refinement on the states reachable from ``reachable_from``.

    ``labels[d]`` is the initial class of state ``d`` (its acceptance). Returns
    ``(block, nblocks)`` with ``block[d]`` the equivalence class of ``d`` (None if
    unreachable); blocks are numbered in BFS order from ``reachable_from`` so equal
    minimal DFAs get equal numberings.
    """
    n = len(delta)
    k = len(delta[0]) if n else 0
    reach = [False] * n
    queue = deque(reachable_from)
    for s in reachable_from:
        reach[s] = True
    while queue:
        d = queue.popleft()
        for t in delta[d]:
            if not reach[t]:
                reach[t] = True
                queue.append(t)
    states = [d for d in range(n) if reach[d]]
    inverse = [[[] for _ in range(k)] for _ in range(n)]
    for d in states:
        for a, t in enumerate(delta[d]):
            inverse[t][a].append(d)

    groups: dict = {}
    for d in states:
        groups.setdefault(labels[d], set()).add(d)
    partition = list(groups.values())
    where = {}
    for i, blk in enumerate(partition):
        for d in blk:
            where[d] = i
    work = set(range(len(partition)))
    while work:
        splitter = partition[work.pop()]
        for a in range(k):
            pre = set()
            for t in splitter:
                pre.update(inverse[t][a])
            touched: dict = {}
            for d in pre:
                touched.setdefault(where[d], set()).add(d)
            for i, inside in touched.items():
                blk = partition[i]
                if len(inside) == len(blk):
                    continue
                outside = blk - inside
                partition[i] = inside
                partition.append(outside)
                j = len(partition) - 1
                for d in outside:
                    where[d] = j
                if i in work:
                    work.add(j)
                else:
                    work.add(i if len(inside) <= len(outside) else j)

    # canonical numbering: BFS over blocks from the starts, symbols in order
    order: dict = {}
    queue = deque()
    for s in reachable_from:
        if where[s] not in order:
            order[where[s]] = len(order)
            queue.append(s)
    while queue:
        d = queue.popleft()
        for t in delta[d]:
            if where[t] not in order:
                order[where[t]] = len(order)
                queue.append(t)
    block = [order[where[d]] if reach[d] else None for d in range(n)]
    return block, len(order)


# ----------------------------------------------------------------- plain DFAs
@dataclass(frozen=True)
class DFA:
    """A complete minimal DFA over ``alphabet``'s classes in canonical (BFS) numbering;
    state 0 is the start. Equal languages <=> equal ``delta`` and ``accept``."""
    delta: tuple
    accept: tuple
    alphabet: Alphabet

    def matches(self, line: str) -> bool:
        d = 0
        for ch in line:
            d = self.delta[d][self.alphabet.symbol(ch)]
        return self.accept[d]

    def canonical(self) -> tuple:
        return self.delta, self.accept


def _top_level(cd: _ContextDFA, ab: Alphabet) -> DFA:
    """Read a context DFA with l = r = 0 (line start/end are non-word) and minimize."""
    labels = cd.accept[0]
    block, nblocks = _hopcroft(cd.delta, labels, [cd.start[0]])
    delta = [None] * nblocks
    accept = [False] * nblocks
    for d in range(cd.n):
        b = block[d]
        if b is not None and delta[b] is None:
            delta[b] = tuple(block[t] for t in cd.delta[d])
            accept[b] = cd.accept[0][d]
    return DFA(tuple(delta), tuple(accept), ab)


def _alphabet(nodes: Sequence, extra_chars: Iterable[str] = ()) -> Alphabet:
    atoms: set = set()
    for node in nodes:
        _atoms(node, atoms)
    return Alphabet(atoms, extra_chars)


def minimal_dfa(regex: str, *, alphabet: Optional[Alphabet] = None,
                max_states: int = DEFAULT_MAX_STATES) -> DFA:
    """The canonical minimal DFA of ``regex`` (over its own alphabet unless given one)."""
    node = parse(regex)
    ab = alphabet or _alphabet([node])
    return _top_level(_Compiler(ab, max_states).context_dfa(node), ab)


def fullmatch(regex: str, line: str, *, max_states: int = DEFAULT_MAX_STATES) -> bool:
    """Whether ``regex`` accepts the whole of ``line`` (via the DFA)."""
    return minimal_dfa(regex, max_states=max_states).matches(line)


def _pair(a: str, b: str, max_states: int):
    na, nb = parse(a), parse(b)
    ab = _alphabet([na, nb])
    compiler = _Compiler(ab, max_states)
    return (_top_level(compiler.context_dfa(na), ab), _top_level(compiler.context_dfa(nb), ab))


def regex_equivalent(a: str, b: str, *, max_states: int = DEFAULT_MAX_STATES) -> bool:
    """True iff NL-RX regexes ``a`` and ``b`` accept exactly the same lines.

    Both are compiled over one shared alphabet of character classes, minimized, and their
    canonical minimal DFAs compared. Raises ``RegexSyntaxError`` / ``RegexTooComplexError``.
    """
    if a == b:
        parse(a)
        return True
    da, db = _pair(a, b, max_states)
    return da.canonical() == db.canonical()


def distinguishing_string(a: str, b: str, *,
                          max_states: int = DEFAULT_MAX_STATES) -> Optional[str]:
    """A shortest line accepted by exactly one of ``a`` and ``b``, or None if equivalent."""
    da, db = _pair(a, b, max_states)
    reps = da.alphabet.reps
    seen = {(0, 0): ""}
    queue = deque([(0, 0)])
    while queue:
        x, y = queue.popleft()
        if da.accept[x] != db.accept[y]:
            return seen[(x, y)]
        for sym, (tx, ty) in enumerate(zip(da.delta[x], db.delta[y])):
            if (tx, ty) not in seen:
                seen[(tx, ty)] = seen[(x, y)] + reps[sym]
                queue.append((tx, ty))
    return None
