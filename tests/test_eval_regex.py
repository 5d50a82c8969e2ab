"""NL-RX regex -> DFA: hand-made pairs, and two oracles on random regexes and strings:
Python's ``re.fullmatch`` (for the part of the dialect ``re`` has) and a span-set matcher
written here from the definition (for all of it: ``&``, ``~``, ``\\b``)."""
import random
import re

import pytest

from megajepa.eval import RegexSyntaxError, regex_equivalent
from megajepa.eval.regex import (Assert, Atom, Compl, Concat, Inter, RegexTooComplexError,
                                 Repeat, Union, distinguishing_string, fullmatch, minimal_dfa,
                                 parse)

EQUAL = [
    (".*dog.*", "(.*dog.*)|(.*dog.*truck.*)"),
    ("([0-9])&(.)", "[0-9]"),
    ("(a){2,}", "aa(a)*"),
    ("(dog){2}", "dogdog"),
    ("(a){1,3}", "a|aa|aaa"),
    ("(x)+", "x(x)*"),
    ("~(~(dog))", "dog"),
    ("~(.*)", "[a]&[b]"),                              # both empty
    ("([AEIOUaeiou])&([a-z])", "[aeiou]"),
    ("([A-Za-z])&([0-9])", "[a]&[b]"),
    (".*(dog).*&.*(truck).*", "(.*dog.*truck.*)|(.*truck.*dog.*)|(.*dogtruck.*)"),
    ("(.*dog.*)&(~(.*truck.*))", "~((~(.*dog.*))|(.*truck.*))"),     # De Morgan
    ("\\bdog\\b", "dog"),                              # line ends are non-word
    ("dog\\btruck", "[a]&[b]"),                        # no boundary inside a word
    ("dog\\b truck", "dog truck"),
    ("(dog)\\b\\b( )", "dog "),
    ("\\b(dog)|(truck)\\b", "dog|truck"),              # | is loosest: (\bdog)|(truck\b)
    ("\\b([0-9])&(.)\\b", "[0-9]"),                    # & binds looser than concatenation
    (".*\\b([0-9])\\b.*", ".*\\b[0-9]\\b.*"),
    ("\\b(.)*", "[A-Za-z0-9_].*"),                       # line start is non-word
    ("~(a)*", "(~(a))*"),                              # ~ binds tighter than *
]

UNEQUAL = [
    ("~(.*dog.*)", ".*dog.*"),
    ("(a){2,}", "a(a)*"),
    ("dog", "dog.*"),
    ("[A-Za-z]", "[a-z]"),
    ("(dog){2}", "dog"),
    ("[AEIOUaeiou]", "[aeiou]"),
    ("~(dog)", "~(truck)"),
    (".*\\bdog.*", ".*dog.*"),                         # "adog" has no boundary before dog
    (".*dog\\b.*", ".*dog.*"),
    ("(a)&(~(b))", "~(b)"),
    ("(.)*", ".+"),
    ("(\\b.)*", "(.)*"),                              # "ab" has no boundary inside
]


@pytest.mark.parametrize("a,b", EQUAL)
def test_equal_pairs(a, b):
    assert regex_equivalent(a, b)
    assert regex_equivalent(b, a)
    assert distinguishing_string(a, b) is None


@pytest.mark.parametrize("a,b", UNEQUAL)
def test_unequal_pairs_with_witness(a, b):
    assert not regex_equivalent(a, b)
    w = distinguishing_string(a, b)
    assert w is not None and fullmatch(a, w) != fullmatch(b, w)
    assert _oracle(parse(a), w) != _oracle(parse(b), w)


def test_witnesses_are_real_lines():
    assert distinguishing_string(".*\\bdog.*", ".*dog.*") not in (None, "dog")
    assert fullmatch(".*\\bdog\\b.*", "a dog here") and not fullmatch(".*\\bdog\\b.*", "adog")
    assert fullmatch("~(.*dog.*)", "cat") and not fullmatch("~(.*dog.*)", "hotdog")


@pytest.mark.parametrize("bad", ["", "(dog", "dog)", "*a", "a|", "&a", "[a-", "a{2", "a{x}",
                                 "a{3,1}", "\\", "\\q", "[z-a]", "a||b", "~", None])
def test_syntax_errors(bad):
    with pytest.raises(RegexSyntaxError):
        regex_equivalent(bad, "a")


def test_state_limit_is_a_clear_error():
    blowup = ".*a" + "." * 9             # the classic 2^n DFA
    with pytest.raises(RegexTooComplexError):
        regex_equivalent(blowup, "a", max_states=500)
    assert regex_equivalent(blowup, blowup + "|" + blowup)


# ------------------------------------------------------------------- oracles
def _word(s, i):
    return int(0 <= i < len(s) and (s[i].isascii() and (s[i].isalnum() or s[i] == "_")))


def _compose(x, y):
    out = set()
    for i, k in x:
        for k2, j in y:
            if k == k2:
                out.add((i, j))
    return out


def _oracle_spans(node, s):
    """All spans (i, j) of ``s`` that ``node`` matches, in the context of the whole line."""
    n = len(s)
    ident = {(i, i) for i in range(n + 1)}
    if isinstance(node, Atom):
        return {(i, i + 1) for i in range(n) if s[i] in node}
    if isinstance(node, Assert):
        return {(i, i) for i in range(n + 1) if (_word(s, i - 1), _word(s, i)) in node.allowed}
    if isinstance(node, Concat):
        out = ident
        for p in node.parts:
            out = _compose(out, _oracle_spans(p, s))
        return out
    if isinstance(node, Union):
        return set().union(*(_oracle_spans(p, s) for p in node.parts))
    if isinstance(node, Inter):
        return set.intersection(*(_oracle_spans(p, s) for p in node.parts))
    if isinstance(node, Compl):
        every = {(i, j) for i in range(n + 1) for j in range(i, n + 1)}
        return every - _oracle_spans(node.child, s)
    assert isinstance(node, Repeat)
    r = _oracle_spans(node.child, s)
    out = ident
    for _ in range(node.lo):
        out = _compose(out, r)
    if node.hi is None:
        while True:
            more = out | _compose(out, r)
            if more == out:
                return out
            out = more
    step = ident | r
    for _ in range(node.hi - node.lo):
        out = _compose(out, step)
    return out


def _oracle(node, s):
    return (0, len(s)) in _oracle_spans(node, s)


ATOMS = ["a", "b", "dog", "[a-z]", "[A-Z]", "[0-9]", "[AEIOUaeiou]", "[A-Za-z]", ".", " "]
CHARS = "abdogAE0_ -"


def _random_regex(rng, depth, full):
    if depth == 0 or rng.random() < 0.25:
        if full and rng.random() < 0.15:
            return "\\b"
        return rng.choice(ATOMS)
    ops = ["cat", "or", "star", "plus", "opt", "count"] + (["and", "not"] if full else [])
    op = rng.choice(ops)
    sub = lambda: "(" + _random_regex(rng, depth - 1, full) + ")"  # noqa: E731
    if op == "cat":
        return sub() + sub()
    if op == "or":
        return sub() + "|" + sub()
    if op == "and":
        return sub() + "&" + sub()
    if op == "not":
        return "~" + sub()
    if op == "count":
        lo = rng.randint(0, 2)
        return sub() + rng.choice([f"{{{lo}}}", f"{{{lo},}}", f"{{{lo},{lo + rng.randint(0, 2)}}}"])
    return sub() + {"star": "*", "plus": "+", "opt": "?"}[op]


def _random_line(rng):
    return "".join(rng.choice(CHARS) for _ in range(rng.randint(0, 6)))


def test_dfa_agrees_with_python_re():
    rng = random.Random(0)
    for _ in range(150):
        rx = _random_regex(rng, 4, full=False)
        if rng.random() < 0.3:
            rx = "\\b" + rx + "\\b" if rng.random() < 0.5 else ".*\\b(" + rx + ").*"
        dfa = minimal_dfa(rx)
        py = re.compile(rx, re.ASCII)
        for _ in range(25):
            line = _random_line(rng)
            assert dfa.matches(line) == bool(py.fullmatch(line)), (rx, line)


def test_dfa_agrees_with_span_oracle_full_dialect():
    rng = random.Random(1)
    for _ in range(120):
        rx = _random_regex(rng, 4, full=True)
        dfa, node = minimal_dfa(rx), parse(rx)
        for _ in range(12):
            line = _random_line(rng)[:5]
            assert dfa.matches(line) == _oracle(node, line), (rx, line)


def test_equivalence_verdicts_against_oracle():
    """Unequal pairs have a witness the oracle confirms; equal pairs agree on samples."""
    rng = random.Random(2)
    unequal = 0
    for _ in range(80):
        a, b = _random_regex(rng, 2, full=True), _random_regex(rng, 2, full=True)
        if rng.random() < 0.3:   # an equal-by-construction pair
            b = "~(~(" + a + "))|(" + a + ")&(" + a + ")"
        na, nb = parse(a), parse(b)
        w = distinguishing_string(a, b)
        assert (w is None) == regex_equivalent(a, b)
        if w is None:
            for _ in range(10):
                line = _random_line(rng)[:5]
                assert _oracle(na, line) == _oracle(nb, line), (a, b, line)
        else:
            unequal += 1
            assert _oracle(na, w) != _oracle(nb, w), (a, b, w)
    assert 10 < unequal < 80
