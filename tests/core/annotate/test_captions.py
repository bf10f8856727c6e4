"""Caption tokens: the same ids as open_clip's own tokenizer, on every road."""

from __future__ import annotations

import random
import string

import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from airflow_curator.core.annotate.captions import CaptionTokenizer  # noqa: E402

AWKWARD = [
    "",
    "   ",
    "A photo of a cat",
    "  Two  dogs,\tplaying   in the snow!  ",
    "it's the dog's ball; they'll've LOVED it",
    "<start_of_text> literal special tokens <END_OF_TEXT> in a caption",
    "Tom &amp; Jerry &amp;amp; friends",  # html entities: open_clip unescapes (three times)
    "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e",  # non-ASCII letters
    "mojibake: caf\u00c3\u00a9",  # ftfy fixes this
    "\u201ccurly quotes\u201d and \ufb01 ligature",
    "line\r\nbreaks\rand\x1b[31mterminal escapes\x1b[0m\x00nul",
    "numbers 12345 and 3.14159, 2nd place",
    "emoji \U0001f600 and CJK \u732b",
    "x" * 400,  # one long token
    " ".join(["word"] * 120),  # over the context: truncated, the end kept
    "punctuation!!! ??? ... --- ((brackets)) [x] {y} #tag @user $5 %50 ^_^ ~ `code`",
]


@pytest.fixture(scope="module")
def reference():
    return open_clip.get_tokenizer("ViT-B-32")


def test_awkward_captions_give_open_clips_ids(reference):
    ours = CaptionTokenizer(reference)
    assert ours.fast
    assert torch.equal(ours(AWKWARD), reference(AWKWARD))
    for text in AWKWARD:  # one at a time too, and again from the token cache
        assert torch.equal(ours([text]), reference([text])), text
        assert torch.equal(ours([text]), reference([text])), text


def test_random_captions_give_open_clips_ids(reference):
    rng = random.Random(7)
    alphabet = string.printable + "&;\u00e9\u00c3\u00a9\u2019\x0b\x1b\u3000"
    texts = []
    for _ in range(400):
        words = [
            "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9)))
            if rng.random() < 0.3
            else rng.choice(["cat", "Dog's", "HTML", "&amp;", "a1b2", "x-ray", "3d", "it's"])
            for _ in range(rng.randint(0, 30))
        ]
        texts.append(rng.choice([" ", "  ", "\t", ""]).join(words))
    ours = CaptionTokenizer(reference)
    assert torch.equal(ours(texts), reference(texts))


def test_other_tokenizers_go_through_their_own_code(reference):
    """A tokenizer the short road was not written for (another cleaning, here) is called as is."""
    other = open_clip.tokenizer.SimpleTokenizer(clean="whitespace")
    ours = CaptionTokenizer(other)
    assert not ours.fast
    assert torch.equal(ours(["Mixed CASE kept"]), other(["Mixed CASE kept"]))
    assert not torch.equal(ours(["Mixed CASE kept"]), reference(["Mixed CASE kept"]))
