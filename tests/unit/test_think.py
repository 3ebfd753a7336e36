"""Reasoning kept apart from the answer, for whole replies and for streams cut anywhere."""

import random

import pytest

from ktdeploy.chat import ThinkSplitter, split_think

R1 = "<think>\nThe user greets me.\nI should answer < 3 words.\n</think>\n\nHello there!"


@pytest.mark.parametrize(
    "text, reasoning, answer",
    [
        (R1, "The user greets me.\nI should answer < 3 words.", "Hello there!"),
        # R1 without --force_think: the opening tag went into the prompt, the reply only closes it
        ("I think.\n</think>\n\nAnswer.", "I think.", "Answer."),
        ("Plain answer, no tags.", "", "Plain answer, no tags."),
        ("<think>\ncut off while thinking", "cut off while thinking", ""),
        ("<think></think>Just this.", "", "Just this."),
    ],
)
def test_split_think(text, reasoning, answer):
    assert split_think(text) == (reasoning, answer)


def _stream(text, cuts):
    sp, parts = ThinkSplitter(), []
    prev = 0
    for cut in sorted(cuts) + [len(text)]:
        parts += sp.feed(text[prev:cut])
        prev = cut
    parts += sp.flush()
    reasoning = "".join(t for k, t in parts if k == "reasoning")
    answer = "".join(t for k, t in parts if k == "answer")
    return reasoning, answer


@pytest.mark.parametrize("text", [R1, "Plain answer, no tags.", "<think>\nshort</think>ok", "  <think>x</think>\ny<z"])
def test_stream_split_equals_whole_split_for_any_chunking(text):
    rng = random.Random(7)
    for _ in range(300):
        cuts = rng.sample(range(1, len(text)), k=rng.randint(0, min(12, len(text) - 1)))
        reasoning, answer = _stream(text, cuts)
        assert (reasoning.strip(), answer.strip()) == split_think(text)


def test_every_single_character_stream():
    assert _stream(R1, range(1, len(R1))) == _stream(R1, [])
    assert _stream(R1, [])[1] == "Hello there!"


def test_stream_holds_back_only_a_possible_tag_prefix():
    sp = ThinkSplitter()
    assert sp.feed("<thi") == []
    assert sp.feed("nk>abc</th") == [("reasoning", "abc")]
    assert sp.feed("ink>\nDone") == [("answer", "Done")]
