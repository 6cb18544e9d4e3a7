"""The zoo's own tokenizer: whole words where the corpus repeats them, characters elsewhere.

A byte-per-token tokenizer makes a skillmix question ~150 tokens long, too long for a tiny
model to learn much on two CPU cores in a minute. This one splits text at spaces (glued
to the next word, "▁capital"), digits and punctuation, and keeps as one token each word
that recurs in the training corpus ("▁capital", "▁Paris"); anything else (digits,
punctuation, rare or upper-case strings) is one character per token, so arithmetic sees
digits and string skills see letters. A WordPiece model with an empty continuation prefix
does exactly that: greedy longest match, and a character inside a word is the same token
as on its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from tokenizers.pre_tokenizers import PreTokenizer

SPACE = "\u2581"  # "▁", the space marker glued to the word after it
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
#: The zoo specialists' template keeps only the last paragraph of a user message: the
#: question with its options. A model of a million parameters cannot use the generic
#: instruction in front of it ("Think step by step ..."), and dropping it makes training
#: sequences 2.3x shorter, which is what fits the zoo's build in minutes on two cores.
ZOO_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'user' %}{{ m['content'].split('\\n\\n')[-1] }}"
    "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: The zoo keyword model's template keeps the first paragraph of the keyword prompt, the
#: question ("Question: ..."): the instructions after it are the same for every question.
KEYWORDS_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'user' %}{{ m['content'].split('\\n\\n')[0] }}"
    "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _pre_tokenizer() -> PreTokenizer:
    from tokenizers import Regex, pre_tokenizers

    # a space is glued to the word after it ("▁capital"), halving the length of a question
    # against one token per space: the zoo trains ~1.5x faster per example
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
            pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never", split=True),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Punctuation(),
        ]
    )


def build_word_tokenizer(
    corpus: Iterable[str],
    path: str | Path,
    min_count: int = 20,
    words: Iterable[str] = (),
) -> int:
    """Build from `corpus`, save a Hugging Face tokenizer folder at `path`; returns its size.
    `words` (e.g. the names in the lookup tables) are whole tokens however rare they are:
    a country spelt letter by letter is much harder to look up than one token."""
    from tokenizers import Tokenizer, decoders, models

    pre = _pre_tokenizer()
    counts: Counter[str] = Counter()
    chars: set[str] = {chr(c) for c in range(33, 127)} | {"\n", SPACE}
    for text in corpus:
        for piece, _ in pre.pre_tokenize_str(text):
            counts[piece] += 1
            chars.update(piece)
    for text in words:  # at the start of a line and after a space
        for piece, _ in [*pre.pre_tokenize_str(text), *pre.pre_tokenize_str(f" {text}")]:
            counts[piece] += min_count
    kept = sorted(
        p
        for p, n in counts.items()
        if n >= min_count and len(p) > 1 and any(c.islower() for c in p)
    )
    vocab: dict[str, int] = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for tok_ in [*sorted(chars), *kept]:
        vocab.setdefault(tok_, len(vocab))
    tok = Tokenizer(
        models.WordPiece(vocab=vocab, unk_token="<|endoftext|>", continuing_subword_prefix="")
    )
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="never", split=True)
    return save_chat_tokenizer(tok, path, chat_template=ZOO_CHAT_TEMPLATE)


def build_byte_tokenizer(path: str | Path) -> int:
    """A byte-level BPE with no merges: encodes any text, one token per byte (tests)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return save_chat_tokenizer(tok, path)


def save_chat_tokenizer(
    tok: Tokenizer, path: str | Path, chat_template: str = CHAT_TEMPLATE
) -> int:
    """Add our special tokens and a ChatML template to a `tokenizers` object and save it as
    a Hugging Face tokenizer folder; returns the vocabulary size."""
    from transformers import PreTrainedTokenizerFast

    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
        chat_template=chat_template,
    )
    fast.save_pretrained(str(path))
    return len(fast)
