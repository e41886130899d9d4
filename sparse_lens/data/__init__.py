"""Data: the corpus (which files), the tokenizer (how text becomes ids) and token files/batches.

Data flows one way: :func:`load_corpus` -> :func:`train_tokenizer` / :func:`default_tokenizer`
-> :func:`split_tokens` -> :func:`get_batch` / :func:`eval_batches`. Each stage is keyed by the
content hashes of the one before it (manifest hash, tokenizer hash), so cached artifacts are
reused exactly when their inputs are unchanged.
"""

from sparse_lens.data.corpus import Corpus, Document, cache_dir, load_corpus, stdlib_dir
from sparse_lens.data.tokenizer import (
    EOT,
    corpus_tokenizer,
    default_tokenizer,
    load_tokenizer,
    save_tokenizer,
    tokenizer_hash,
    train_tokenizer,
)
from sparse_lens.data.tokens import (
    check_token_ids,
    encode_documents,
    eval_batches,
    get_batch,
    split_tokens,
    token_file_path,
)

__all__ = [
    "EOT",
    "Corpus",
    "Document",
    "cache_dir",
    "check_token_ids",
    "corpus_tokenizer",
    "default_tokenizer",
    "encode_documents",
    "eval_batches",
    "get_batch",
    "load_corpus",
    "load_tokenizer",
    "save_tokenizer",
    "split_tokens",
    "stdlib_dir",
    "token_file_path",
    "tokenizer_hash",
    "train_tokenizer",
]
