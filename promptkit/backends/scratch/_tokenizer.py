"""Byte-level BPE tokenization through the ``tokenizers`` library (GPT-2's scheme).

Loads GPT-2's files (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``) so that token ids
match GPT-2's exactly, and trains a new byte-level BPE on a corpus for models trained from
scratch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ...errors import ConfigurationError

__all__ = ["END_OF_TEXT", "Tokenizer"]

END_OF_TEXT = "<|endoftext|>"


class Tokenizer:
    """Text <-> token ids, with an end-of-text token (GPT-2's, unless the model names another:
    a Llama-family model's end-of-sequence or end-of-turn token)."""

    def __init__(self, backend: object, *, end_of_text: str = END_OF_TEXT):
        from tokenizers import Tokenizer as HFTokenizer

        if not isinstance(backend, HFTokenizer):
            raise ConfigurationError("Tokenizer wraps a tokenizers.Tokenizer")
        self._tokenizer = backend
        self._special: HFTokenizer | None = None  # a copy that recognises special tokens
        backend.encode_special_tokens = True  # "<|endoftext|>" in text is text, not a token
        eot = backend.token_to_id(end_of_text)
        if eot is None:
            raise ConfigurationError(
                f"the tokenizer has no {end_of_text!r} token; promptkit models need it to mark "
                "the end of a text"
            )
        self.eot_id: int = eot

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; the text ``<|endoftext|>`` is data, never the EOT token."""
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def encode_with_special_tokens(self, text: str) -> list[int]:
        """Token ids of ``text`` where special-token text (``<|im_start|>``...) is the special
        token: for a prompt rendered by the model's own chat template, never for user data."""
        if self._special is None:
            from tokenizers import Tokenizer as HFTokenizer

            special = HFTokenizer.from_str(self._tokenizer.to_str())
            special.encode_special_tokens = False
            self._special = special
        return list(self._special.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [
            list(e.ids) for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        ]

    def encode_batch_with_ends(self, texts: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """Token ids of each text, with the character offset where each token ends."""
        return [
            (list(e.ids), [end for _, end in e.offsets])
            for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        ]

    def decode(self, ids: Iterable[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=False))

    def to_llguidance(self, vocab_size: int) -> Any:
        """This tokenizer for llguidance (constrained decoding), over ``vocab_size`` model rows."""
        from ..._llg import load_llguidance

        return load_llguidance().LLTokenizer(
            self._tokenizer.to_str(), n_vocab=vocab_size, eos_token=self.eot_id
        )

    def save(self, folder: str | os.PathLike[str]) -> Path:
        path = Path(folder) / "tokenizer.json"
        self._tokenizer.save(str(path))
        return path

    @classmethod
    def from_folder(
        cls, folder: str | os.PathLike[str], *, end_of_text: str = END_OF_TEXT
    ) -> Tokenizer:
        """Load ``tokenizer.json``, or GPT-2's ``vocab.json`` + ``merges.txt``, from a folder."""
        from tokenizers import Tokenizer as HFTokenizer

        root = Path(folder)
        if (root / "tokenizer.json").is_file():
            try:
                backend = HFTokenizer.from_file(str(root / "tokenizer.json"))
            except Exception as exc:  # tokenizers raises a bare Exception for bad files
                raise ConfigurationError(f"cannot read {root / 'tokenizer.json'}: {exc}") from None
            return cls(backend, end_of_text=end_of_text)
        if (root / "vocab.json").is_file() and (root / "merges.txt").is_file():
            return cls.from_bpe_files(root / "vocab.json", root / "merges.txt")
        raise ConfigurationError(
            f"no tokenizer in {str(root)!r}: expected tokenizer.json, or vocab.json and merges.txt"
        )

    @classmethod
    def from_bpe_files(
        cls, vocab: str | os.PathLike[str], merges: str | os.PathLike[str]
    ) -> Tokenizer:
        """GPT-2's byte-level BPE from its ``vocab.json`` and ``merges.txt``."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        try:
            model = models.BPE.from_file(str(vocab), str(merges))
        except Exception as exc:
            raise ConfigurationError(f"cannot read BPE files {vocab}, {merges}: {exc}") from None
        tokenizer = HFTokenizer(model)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.add_special_tokens([END_OF_TEXT])
        return cls(tokenizer)

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int, *, bare_capitals: bool = False
    ) -> Tokenizer:
        """Train a byte-level BPE of ``vocab_size`` tokens (EOT included) on ``texts``.

        ``bare_capitals``: the space before a capitalised word is a token of its own, so the
        word's tokens are the same after a space (``Ana Lima moved``) as after a quote
        (``{"name":"Ana Lima"}``) and copying a name into JSON is copying tokens. Costs about
        8% more tokens on promptkit's corpus."""
        from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
        from tokenizers import Tokenizer as HFTokenizer

        minimum = 256 + 1
        if vocab_size < minimum:
            raise ConfigurationError(
                f"vocab_size must be at least {minimum} (256 bytes + end-of-text), got {vocab_size}"
            )
        tokenizer = HFTokenizer(models.BPE())
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
        if bare_capitals:
            space = pre_tokenizers.Split(Regex(r" (?=\p{Lu})"), behavior="isolated")
            tokenizer.pre_tokenizer = pre_tokenizers.Sequence([space, byte_level])
        else:
            tokenizer.pre_tokenizer = byte_level
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[END_OF_TEXT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)
