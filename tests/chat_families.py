"""Chat-template families for offline tests: templates written here, tokenizers built in code.

Each template renders its family's documented format and quirks (written for these tests, not
copied from a released model):

- ChatML / Qwen2.5: ``<|im_start|>role\\n...<|im_end|>\\n``; a default system prompt is
  injected when the conversation has none.
- Qwen3: ChatML, plus reasoning blocks: assistant turns after the last user turn get
  ``<think>\\n...\\n</think>\\n\\n`` (empty when there is no reasoning); ``enable_thinking=false``
  puts an empty think block in the generation prompt.
- Llama 3: BOS written by the template, header tokens, content ``| trim``, a system block with
  today's date from ``strftime_now`` unless ``date_string`` is given; ``<|eot_id|>`` ends turns
  and the EOS list is ``[<|end_of_text|>, <|eot_id|>]``.
- Gemma: BOS, ``<start_of_turn>user|model``, content trimmed, no system role (raises).
- Mistral v0.3: ``<s>[INST] user[/INST] answer</s>``, the system prompt prepended to the *last*
  user turn (so earlier renderings are rewritten as the chat grows).

Qwen and Llama get a byte-level BPE tokenizer, Mistral and Gemma a Metaspace (SentencePiece-
style, ``▁``) one; both plain-encode with a BOS where the family does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CHATML = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' -}}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' -}}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)

QWEN3 = (
    "{%- set ns = namespace(last_query=-1) -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.last_query = loop.index0 -%}{%- endif -%}{%- endfor -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}"
    "{{- '<|im_start|>system\n' + m['content'] + '<|im_end|>\n' -}}"
    "{%- elif m['role'] == 'user' -%}"
    "{{- '<|im_start|>user\n' + m['content'] + '<|im_end|>\n' -}}"
    "{%- else -%}"
    "{%- set content = m['content'] -%}{%- set reasoning = '' -%}"
    "{%- if m.reasoning_content is string -%}{%- set reasoning = m.reasoning_content -%}"
    "{%- elif '</think>' in content -%}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\n') -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\n') -%}"
    "{%- endif -%}"
    "{%- if loop.index0 > ns.last_query -%}"
    "{{- '<|im_start|>assistant\n<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') -}}"
    "{%- else -%}"
    "{{- '<|im_start|>assistant\n' + content -}}"
    "{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\n\n</think>\n\n' -}}{%- endif -%}"
    "{%- endif -%}"
)

LLAMA3 = (
    "{{- bos_token -}}"
    "{%- if date_string is not defined -%}{%- set date_string = strftime_now('%d %b %Y') -%}{%- endif -%}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] | trim -%}{%- set messages = messages[1:] -%}"
    "{%- else -%}{%- set system_message = '' -%}{%- endif -%}"
    "{{- '<|start_header_id|>system<|end_header_id|>\n\n' -}}"
    "{{- 'Cutting Knowledge Date: December 2023\nToday Date: ' + date_string + '\n\n' -}}"
    "{{- system_message + '<|eot_id|>' -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}"
)

GEMMA = (
    "{{- bos_token -}}"
    "{%- if messages[0]['role'] == 'system' -%}{{- raise_exception('System role not supported') -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{- '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}"
)

MISTRAL = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{{- bos_token -}}"
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in loop_messages -%}{%- if m['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}{%- endfor -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if loop.index0 == ns.last_user and system_message is defined -%}"
    "{{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' -}}"
    "{%- else -%}{{- '[INST] ' + message['content'] + '[/INST]' -}}{%- endif -%}"
    "{%- else -%}"
    "{{- ' ' + message['content'] | trim + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


@dataclass
class Family:
    """One template family: its template, tokenizer kind, special tokens and EOS list."""

    name: str
    template: str | None
    pre_tokenizer: str  # "bytelevel" | "metaspace"
    specials: list[str]
    eos: str
    end_of_turn: str  # what the template writes after each answer
    eos_list: list[str]  # the decoder's generation_config.eos_token_id
    bos: str | None = None
    pad: str | None = None
    plain_added: list[str] = field(default_factory=list)  # added, not special (Qwen3 <think>)


FAMILIES = {
    "chatml": Family("chatml", CHATML, "bytelevel", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>", "<|im_end|>",
                     ["<|im_end|>", "<|endoftext|>"], pad="<|endoftext|>"),
    "qwen3": Family("qwen3", QWEN3, "bytelevel", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>", "<|im_end|>",
                    ["<|im_end|>", "<|endoftext|>"], pad="<|endoftext|>", plain_added=["<think>", "</think>"]),
    "llama3": Family("llama3", LLAMA3, "bytelevel",
                     ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                     "<|eot_id|>", "<|eot_id|>", ["<|end_of_text|>", "<|eot_id|>"], bos="<|begin_of_text|>"),
    "gemma": Family("gemma", GEMMA, "metaspace", ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
                    "<eos>", "<end_of_turn>", ["<eos>", "<end_of_turn>"], bos="<bos>", pad="<pad>"),
    "mistral": Family("mistral", MISTRAL, "metaspace", ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], "</s>", "</s>", ["</s>"], bos="<s>"),
}

TEXTS = [
    "What colour is the circle? red blue green yellow. Is it red? a square, a triangle and a circle.",
    "Be brief. Answer in one word. How many shapes are there? two three one. Hello there, assistant.",
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant. Cutting Knowledge Date: December 2023",
    "Today Date: 26 Jul 2024 01 Jan 2030 Nov Dec system user model im end think",
]


def build_tokenizer(family: Family, texts: list[str] = TEXTS, vocab_size: int = 400):
    """A fast tokenizer of the family's kind, trained on ``texts``, with the family's specials."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if family.pre_tokenizer == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>" if "<unk>" in family.specials else None))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = sorted(set("".join(texts)) | set("▁\n"))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=family.specials, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    if family.plain_added:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in family.plain_added])
    if family.bos:  # plain encoding puts BOS first, as the family's released tokenizers do
        tok.post_processor = processors.TemplateProcessing(single=f"{family.bos} $A", special_tokens=[(family.bos, tok.token_to_id(family.bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=family.eos, bos_token=family.bos, pad_token=family.pad,
                                   unk_token="<unk>" if "<unk>" in family.specials else None)
    if family.template:
        fast.chat_template = family.template
    return fast


def make_decoder_dir(root: Path, family: Family, template: bool = True, tie: bool = False, dropout: float = 0.0, seed: int = 0) -> Path:
    """Save a tiny Llama-architecture decoder with the family's tokenizer and EOS list to ``root``."""
    import torch
    import transformers

    fam = family if template else Family(**{**family.__dict__, "template": None})
    tok = build_tokenizer(fam)
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=tie, attention_dropout=dropout,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.convert_tokens_to_ids(family.eos),
        pad_token_id=tok.pad_token_id,
    )
    model = transformers.LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids(family.eos_list)
    root.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(root)
    tok.save_pretrained(root)
    return root
