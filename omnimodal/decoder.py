"""The language side: build or load a Hugging Face causal LM and its tokenizer.

``kind: scratch`` builds a small Llama-architecture model from config with a byte-level BPE
tokenizer trained on the run's text (offline). ``kind: pretrained`` loads any causal LM and
its tokenizer by hub id or local directory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from omnimodal.errors import ConfigError

# Role markers and the end-of-turn token used by omnimodal's default template.
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
END_TOKEN = "<|end|>"
PAD_TOKEN = "<|pad|>"

# {% generation %} marks the tokens that get labels: the tokenizer's assistant-token mask is
# derived from the rendered chat itself, never by splitting strings on separators.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{%- else -%}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)


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


def load_tokenizer(path: str, chat_template: str = "default"):
    """Load a pretrained tokenizer and settle its chat template (see ``conf/decoder``)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise ConfigError(f"decoder: cannot load a tokenizer from {path!r}: {exc}") from exc
    if chat_template == "default":
        tok.add_special_tokens({"additional_special_tokens": []})
        tok.add_tokens([*ROLE_TOKENS, END_TOKEN], special_tokens=True)
        tok.chat_template = DEFAULT_CHAT_TEMPLATE
        tok.eos_token = END_TOKEN
    elif chat_template == "tokenizer":
        if not tok.chat_template or "{% generation %}" not in tok.chat_template.replace("{%- generation %}", "{% generation %}"):
            raise ConfigError(
                f"decoder {path!r}: its chat template has no {{% generation %}} markers, so assistant "
                "tokens cannot be found exactly. Use decoder.chat_template=default."
            )
    else:
        raise ConfigError(f"decoder.chat_template must be 'default' or 'tokenizer', got {chat_template!r}")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


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
