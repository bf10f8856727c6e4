"""Captions to CLIP token ids: open_clip's own tokenizer, with a shorter road for plain captions.

open_clip's ``SimpleTokenizer`` runs every caption through ftfy (a dozen fixers and a Unicode
normalisation), ``html.unescape`` twice, the ``regex`` module's Unicode word split and a
per-byte remapping in Python, then copies each row into the result through its own tensor. On
the CPU that is about a tenth of a millisecond a caption in the main thread, which holds the GIL
for it. For a caption of printable ASCII without ``&`` none of those fixers, nor the unescaping,
can change a character (they act only on non-ASCII text, control characters, ``\\r``, terminal
escapes and HTML entities), the Unicode classes of its split are the ASCII ones, and the byte
remapping is the identity on printable ASCII; so such a caption is split with stdlib ``re`` and
its tokens' ids are cached. Any other caption, and any tokenizer but open_clip's plain CLIP one,
goes through open_clip's code. The ids are the same either way
(``tests/core/annotate/test_captions.py`` compares them on awkward and random captions).
"""

from __future__ import annotations

import re
from typing import Any

SPECIAL = ("<start_of_text>", "<end_of_text>")
# open_clip's split (SimpleTokenizer.pat) with \p{L} and \p{N} as their ASCII members, which is
# all a printable ASCII caption has; lowercased first, as open_clip's "lower" cleaning does
_ASCII_SPLIT = re.compile("|".join(SPECIAL) + r"|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")
_OPEN_CLIP_SPLIT = "|".join(SPECIAL) + r"|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"


class CaptionTokenizer:
    """``tokenizer(texts)`` (an int64 tensor, one row of ``context_length`` ids per caption),
    open_clip's results, faster on plain captions when ``tokenizer`` is open_clip's CLIP BPE."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.fast = _is_plain_clip_bpe(tokenizer)
        self._ids: dict[str, list[int]] = {}  # token -> its BPE ids

    def __call__(self, texts: list[str]) -> Any:
        if not self.fast:
            return self.tokenizer(texts)
        import numpy as np
        import torch

        tok = self.tokenizer
        n = tok.context_length
        out = np.zeros((len(texts), n), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = [tok.sot_token_id, *self.encode(text), tok.eot_token_id]
            if len(ids) > n:  # open_clip's truncation: the last id kept is the end
                ids = ids[:n]
                ids[-1] = tok.eot_token_id
            out[i, : len(ids)] = ids
        return torch.from_numpy(out)

    def encode(self, text: str) -> list[int]:
        """open_clip's ``SimpleTokenizer.encode(text)``."""
        if not (text.isascii() and text.isprintable()) or "&" in text:
            return list(self.tokenizer.encode(text))
        ids: list[int] = []
        cache = self._ids
        for token in _ASCII_SPLIT.findall(" ".join(text.split()).lower()):
            found = cache.get(token)
            if found is None:
                encoder = self.tokenizer.encoder
                found = cache[token] = [encoder[t] for t in self.tokenizer.bpe(token).split(" ")]
            ids += found
        return ids


def _is_plain_clip_bpe(tokenizer: Any) -> bool:
    """open_clip's ``SimpleTokenizer`` as CLIP models use it: "lower" cleaning, no reduction,
    only the two special tokens, and the split and byte table this module assumes."""
    try:
        from open_clip import tokenizer as oc
    except ImportError:
        return False
    return (
        type(tokenizer) is oc.SimpleTokenizer
        and tokenizer.clean_fn is oc._clean_lower
        and tokenizer.reduction_fn is None
        and bool(tokenizer.context_length)
        and tokenizer.pat.pattern == _OPEN_CLIP_SPLIT
        and all(tokenizer.byte_encoder[b] == chr(b) for b in range(0x21, 0x7F))
        and all(tokenizer.cache.get(t) == t for t in SPECIAL)
        and len(tokenizer.all_special_ids) == len(SPECIAL)
    )
