"""The language side: build or load a Hugging Face causal LM and its tokenizer.

``kind: scratch`` builds a small Llama-architecture model from config with a byte-level BPE
tokenizer trained on the run's text (offline). ``kind: pretrained`` loads any causal LM and
its tokenizer by hub id or local directory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from omnimodal.errors import ConfigError

# Re-exported: the template and its tokens live in omnimodal.templates.
from omnimodal.templates import (  # noqa: E402,F401
    DEFAULT_CHAT_TEMPLATE,
    END_TOKEN,
    PAD_TOKEN,
    ROLE_TOKENS,
    chat_format,
    merge_eos,
    settle_template,
    warn_on_dated_template,
)

log = logging.getLogger(__name__)


def distinct(texts: Iterable[str]) -> Iterator[str]:
    """Each text once, streamed; the BPE trainer's result depends on the set, not the order
    (checked), so this matches ``sorted(set(texts))`` while holding only 8-byte digests."""
    import hashlib

    seen: set[bytes] = set()
    for text in texts:
        key = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
        if key not in seen:
            seen.add(key)
            yield text


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 600):
    """Train a byte-level BPE tokenizer on ``texts`` (deterministic) and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD_TOKEN, END_TOKEN, *ROLE_TOKENS]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(distinct(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=END_TOKEN)
    fast.chat_template = DEFAULT_CHAT_TEMPLATE
    return fast


def load_tokenizer(path: str, chat_template: str = "auto", template_kwargs: dict[str, Any] | None = None):
    """Load a pretrained tokenizer and settle its chat template (see ``conf/decoder/pretrained.yaml``).

    The tokenizer keeps its special tokens, ids and BOS behaviour. Its :class:`ChatFormat`
    gets the EOS list of the tokenizer, the decoder's ``generation_config`` and ``config``
    (Llama 3: ``<|eot_id|>`` and ``<|end_of_text|>``), the template kwargs and the vocabulary
    size before omnimodal adds tokens.
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"decoder: cannot load a tokenizer from {path!r}: {exc}") from exc
    fmt = chat_format(tok)
    fmt.base_vocab_size = len(tok)
    fmt.template_kwargs = dict(template_kwargs or {})
    fmt.eos_ids = merge_eos(tok.eos_token_id, *pretrained_eos_ids(path))
    settle_template(tok, chat_template, path)
    warn_on_dated_template(tok)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def pretrained_eos_ids(path: str) -> list[int]:
    """EOS ids declared by a decoder directory's ``generation_config.json`` and ``config.json``."""
    from transformers import AutoConfig, GenerationConfig

    found: list[int] = []
    for load in (GenerationConfig.from_pretrained, AutoConfig.from_pretrained):
        try:
            cfg = load(path)
        except (OSError, ValueError):
            continue
        found = merge_eos(found, getattr(cfg, "eos_token_id", None))
    return found


def add_placeholders(tokenizer, placeholders: Iterable[str]) -> dict[str, int]:
    """Add each placeholder as a special token; return placeholder -> token id."""
    from tokenizers import AddedToken

    new = [p for p in placeholders if p not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_tokens([AddedToken(p, special=True, normalized=False) for p in new], special_tokens=True)
    return {p: tokenizer.convert_tokens_to_ids(p) for p in placeholders}


def build_decoder(cfg: dict[str, Any], tokenizer):
    """Build (scratch) or load (pretrained) the causal LM, sized to the tokenizer's vocabulary."""
    import torch
    import transformers

    kind = cfg.get("kind")
    if kind == "scratch":
        arch = cfg.get("architecture", "llama")
        if arch != "llama":
            raise ConfigError(f"decoder.architecture {arch!r} is not supported for scratch decoders. Valid: llama.")
        keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "initializer_range")
        config = transformers.LlamaConfig(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            **{k: cfg[k] for k in keys if k in cfg},
        )
        return transformers.LlamaForCausalLM(config)
    if kind == "pretrained":
        path = cfg.get("path")
        dtype = getattr(torch, cfg.get("dtype", "float32"))
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except OSError as exc:
            raise ConfigError(f"decoder: cannot load a causal LM from {path!r}: {exc}") from exc
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        return model
    raise ConfigError(f"decoder.kind {kind!r} is unknown. Valid choices: pretrained, scratch.")


def decoder_from_config(config_dict: dict[str, Any]):
    """Rebuild a decoder architecture (no weights) from its saved ``config.json`` dict."""
    import transformers

    config = transformers.AutoConfig.for_model(**config_dict)
    return transformers.AutoModelForCausalLM.from_config(config)


def _embed_scale(module) -> Any:
    """The factor an embedding module multiplies its rows by (Gemma's ``embed_scale``), else 1."""
    return getattr(module, "embed_scale", 1.0)


def new_token_rows(decoder, token_ids: list[int]):
    """A :class:`NewTokenRows` module for ``token_ids`` of ``decoder`` (built lazily: torch import)."""
    import torch
    from torch import nn

    class NewTokenRows(nn.Module):
        """Trainable rows for tokens omnimodal added, over a frozen embedding matrix and LM head.

        The decoder's own weights stay frozen and bitwise unchanged except those rows (written
        back by :meth:`merge`); the optimizer holds state for ``k x d`` values only, not for the
        whole vocabulary (a gradient mask over the full matrix would keep AdamW moments for all
        of it: GBs on a 7B decoder). Forward hooks put the rows in: the input embedding's output
        at the new ids, the LM head's logits of the new ids. A tied LM head shares ``embed``.
        """

        def __init__(self) -> None:
            super().__init__()
            emb = decoder.get_input_embeddings()
            head = decoder.get_output_embeddings()
            ids = torch.tensor(sorted(set(token_ids)), dtype=torch.long, device=emb.weight.device)
            self.register_buffer("ids", ids, persistent=False)
            lookup = torch.full((emb.weight.shape[0],), -1, dtype=torch.long, device=ids.device)
            lookup[ids] = torch.arange(len(ids), device=ids.device)
            self.register_buffer("lookup", lookup, persistent=False)
            self.embed = nn.Parameter(emb.weight.detach()[ids].clone())
            self.tied = head is None or head.weight is emb.weight
            self.head = None if self.tied else nn.Parameter(head.weight.detach()[ids].clone())
            self._modules_ref = (emb, head)  # not submodules: their weights stay the decoder's
            self._handles = [emb.register_forward_hook(self._embed_hook)]
            if head is not None:
                self._handles.append(head.register_forward_hook(self._head_hook))

        def _embed_hook(self, module, args, output):
            pos = self.lookup[args[0]]
            hit = (pos >= 0).unsqueeze(-1)
            rows = self.embed[pos.clamp(min=0)] * _embed_scale(module)
            return torch.where(hit, rows.to(output.dtype), output)

        def _head_hook(self, module, args, output):
            rows = self.embed if self.tied else self.head
            logits = args[0] @ rows.to(args[0].dtype).T
            if getattr(module, "bias", None) is not None:
                logits = logits + module.bias[self.ids]
            return output.index_copy(-1, self.ids, logits.to(output.dtype))

        @torch.no_grad()
        def merge(self) -> None:
            """Write the rows into the decoder's weights (idempotent; outputs do not change)."""
            emb, head = self._modules_ref
            emb.weight[self.ids] = self.embed.to(emb.weight.dtype)
            if head is not None and not self.tied:
                head.weight[self.ids] = self.head.to(head.weight.dtype)

        def remove(self) -> None:
            """Merge, then take the hooks off."""
            self.merge()
            for h in self._handles:
                h.remove()
            self._handles = []

    return NewTokenRows()
