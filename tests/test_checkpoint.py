"""checkpoint.find_latest / resolve_checkpoint without DeepSpeed: the scan that runs when
``latest`` is missing or damaged, and tags that must never be chosen."""
import json
import os

import pytest

from megajepa.checkpoint import (COMPLETE, LATEST, complete_tags, find_latest,
                                 resolve_checkpoint, tag_for)


def make_root(tmp_path, complete=(2, 4, 10), partial=(12,), latest=None):
    """``checkpoints/`` with complete tags, interrupted saves (no COMPLETE) and ``latest``."""
    root = tmp_path / "run" / "checkpoints"
    for step in complete + partial:
        d = root / tag_for(step)
        d.mkdir(parents=True)
        (d / "client_rank0.pt").write_bytes(b"x")
        if step in complete:
            (d / COMPLETE).write_text(json.dumps({"step": step}))
    (root / "not_a_tag").mkdir()
    if latest is not None:
        (root / LATEST).write_text(latest)
    return str(root)


def test_valid_latest_is_used(tmp_path):
    root = make_root(tmp_path, latest=tag_for(4))  # an older complete tag, deliberately
    assert find_latest(root) == tag_for(4)


@pytest.mark.parametrize("latest", [None, "", "garbage\n", tag_for(12), tag_for(99),
                                    "../checkpoints", "\x00\x01", "\xff\xfe"])
def test_missing_or_damaged_latest_falls_back_to_the_newest_complete_tag(tmp_path, latest):
    """Missing, empty, unreadable, naming an interrupted save or a tag that is gone: the scan
    returns the NEWEST complete tag (step 10 sorts after 4 and 2), never the partial 12."""
    root = make_root(tmp_path, latest=latest)
    assert complete_tags(root) == [tag_for(2), tag_for(4), tag_for(10)]
    assert find_latest(root) == tag_for(10)
    assert resolve_checkpoint(os.path.dirname(root)) == (root, tag_for(10))


def test_latest_as_a_directory_is_damage_too(tmp_path):
    root = make_root(tmp_path)
    os.mkdir(os.path.join(root, LATEST))
    assert find_latest(root) == tag_for(10)


def test_nothing_complete(tmp_path):
    root = make_root(tmp_path, complete=(), partial=(3, 5), latest=tag_for(5))
    assert find_latest(root) is None
    assert find_latest(str(tmp_path / "absent")) is None
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_checkpoint(os.path.dirname(root))
    with pytest.raises(FileNotFoundError, match="incomplete"):
        resolve_checkpoint(os.path.join(root, tag_for(5)))


def test_resolve_accepts_run_dir_checkpoints_dir_and_step_dir(tmp_path):
    root = make_root(tmp_path, latest=tag_for(10))
    run_dir = os.path.dirname(root)
    assert resolve_checkpoint(run_dir) == (root, tag_for(10))
    assert resolve_checkpoint(root + "/") == (root, tag_for(10))
    assert resolve_checkpoint(os.path.join(root, tag_for(2))) == (root, tag_for(2))


def test_tags_past_eight_digits_are_found_and_ordered_by_step(tmp_path):
    """Step 1e8 and beyond (``step_100000000``, 9 digits) is a tag like any other, newer than
    ``step_99999999`` although it sorts before it as text; pruning keeps by step too."""
    from megajepa.checkpoint import _prune

    big = (99_999_999, 100_000_000, 123_456_789)
    root = make_root(tmp_path, complete=(5,) + big, partial=(200_000_000,))
    assert tag_for(100_000_000) == "step_100000000"
    assert complete_tags(root) == [tag_for(s) for s in (5,) + big]
    assert find_latest(root) == tag_for(123_456_789)  # no `latest`: the scan
    (tmp_path / "run" / "checkpoints" / LATEST).write_text(tag_for(100_000_000))
    assert find_latest(root) == tag_for(100_000_000)
    step_dir = os.path.join(root, tag_for(100_000_000))
    assert resolve_checkpoint(step_dir) == (root, tag_for(100_000_000))
    _prune(root, keep=2)
    assert complete_tags(root) == [tag_for(100_000_000), tag_for(123_456_789)]
    assert not os.path.exists(os.path.join(root, tag_for(200_000_000)))  # partial, not newest


@pytest.mark.parametrize("latest", ["../other/step_00000100", "{abs}", "./step_00000004",
                                    "step_00000004/."])
def test_latest_naming_a_path_is_not_followed(tmp_path, latest):
    """``latest`` must name a tag inside this checkpoints folder: a path, even to a complete
    checkpoint (another run's, or an older one here), is damage: the newest complete tag wins."""
    other = tmp_path / "run" / "other" / tag_for(100)  # ../other/step_00000100 from checkpoints/
    other.mkdir(parents=True)
    (other / COMPLETE).write_text("{}")
    root = make_root(tmp_path, latest=latest.format(abs=other))
    assert find_latest(root) == tag_for(10)
    assert resolve_checkpoint(os.path.dirname(root)) == (root, tag_for(10))
