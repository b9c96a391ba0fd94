"""Chat templates: label spans by character offsets on every template family, template choice,
template kwargs, tokenizer kept as it is. Templates and tokenizers come from ``chat_families``."""

import logging

import pytest

from omnimodal.errors import ConfigError, DataError
from omnimodal.templates import (
    DEFAULT_CHAT_TEMPLATE,
    END_TOKEN,
    chat_format,
    encode_chat,
    render,
    settle_template,
    tokenize_rendered,
)

from .chat_families import FAMILIES, build_tokenizer, make_decoder_dir

# Answers that also occur in questions and in template text ("a" in "assistant", "Alibaba";
# "red" in "created"), and answers with whitespace that trimming templates remove.
CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Is it red? Answer red or a colour."},
    {"role": "assistant", "content": "red"},
    {"role": "user", "content": "And the assistant?"},
    {"role": "assistant", "content": " a "},
]


def _tok(name):
    fam = FAMILIES[name]
    tok = build_tokenizer(fam)
    chat_format(tok).eos_ids = tok.convert_tokens_to_ids(fam.eos_list)
    return tok


def _labelled(tok, ids, mask):
    """Decoded groups of consecutive labelled tokens."""
    groups, cur = [], []
    for t, m in zip(ids, mask):
        if m:
            cur.append(t)
        elif cur:
            groups.append(cur)
            cur = []
    if cur:
        groups.append(cur)
    return [tok.decode(g) for g in groups]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_answer_is_labelled_through_its_end_of_turn_token(name):
    fam, tok = FAMILIES[name], _tok(name)
    ids, mask = encode_chat(tok, CONV, source="mem:1")
    end = fam.end_of_turn
    # trimming templates (Llama 3, Gemma, Mistral) drop the spaces around " a "
    second = " a " if name in ("chatml", "qwen3") else "a"
    assert _labelled(tok, ids, mask) == [f"red{end}", f"{second}{end}"]
    # everything before the first answer (system prompt, questions, headers) is unlabelled
    first = mask.index(1)
    assert "Is it red?" in tok.decode(ids[:first])


@pytest.mark.parametrize("name", [n for n in FAMILIES if n != "gemma"])
def test_ids_equal_apply_chat_template_and_bos_is_written_once(name):
    tok = _tok(name)
    ids, _ = encode_chat(tok, CONV)
    assert ids == tok.apply_chat_template(CONV, tokenize=True, return_dict=True)["input_ids"]
    if FAMILIES[name].bos:
        bos = tok.bos_token_id
        assert ids.count(bos) == 1 and ids[0] == bos
        # the trap: tokenizing the rendered text again with special tokens puts a second BOS
        assert tok(render(tok, CONV))["input_ids"][:2] == [bos, bos]


def test_offsets_come_from_tokenizer_kwargs_not_a_dropped_argument():
    """transformers 5.24 passes ``return_offsets_mapping`` given to ``apply_chat_template`` to the
    template, not the tokenizer; ``tokenizer_kwargs`` reaches it. Ours equals that route."""
    tok = _tok("llama3")
    chat_format(tok).template_kwargs = {"date_string": "26 Jul 2024"}
    out = tok.apply_chat_template(CONV, tokenize=True, return_dict=True, date_string="26 Jul 2024",
                                  tokenizer_kwargs={"return_offsets_mapping": True})
    ids, offsets = tokenize_rendered(tok, render(tok, CONV))
    assert ids == out["input_ids"] and offsets == [tuple(o) for o in out["offset_mapping"]]
    # the trap itself (if transformers starts honouring it, this line can go)
    dropped = tok.apply_chat_template(CONV, tokenize=True, return_dict=True, date_string="26 Jul 2024", return_offsets_mapping=True)
    assert "offset_mapping" not in dropped


def test_metaspace_token_starts_before_the_content_and_is_still_labelled():
    tok = _tok("mistral")
    ids, mask = encode_chat(tok, CONV)
    text = render(tok, CONV)
    _, offsets = tokenize_rendered(tok, text)
    k = mask.index(1)
    assert tok.convert_ids_to_tokens(ids[k]) == "▁red"
    start = text.index("[/INST] red") + len("[/INST] ")
    assert offsets[k][0] == start - 1  # "▁red" covers the space before "red"


def test_mistral_system_prompt_moves_to_the_last_user_turn():
    tok = _tok("mistral")
    text = render(tok, CONV)
    assert text.index("Be brief.") > text.index("red</s>")  # rendered after the first answer
    ids, mask = encode_chat(tok, CONV)
    assert _labelled(tok, ids, mask) == ["red</s>", "a</s>"]


def test_chatml_default_system_prompt_is_injected_and_never_labelled():
    tok = _tok("chatml")
    conv = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "Qwen"}]
    ids, mask = encode_chat(tok, conv)
    assert "You are Qwen, created by Alibaba Cloud" in tok.decode(ids)
    assert _labelled(tok, ids, mask) == ["Qwen<|im_end|>"]


def test_qwen3_think_block_on_the_last_turn_is_not_labelled_and_kwargs_reach_the_template():
    tok = _tok("qwen3")
    ids, mask = encode_chat(tok, CONV)
    text = tok.decode(ids)
    assert text.count("<think>\n\n</think>\n\n") == 1  # the last assistant turn only
    assert text.index("<think>") > text.index("red<|im_end|>")
    assert all("think" not in piece for piece in _labelled(tok, ids, mask))
    prompt = CONV[:2]
    assert not render(tok, prompt, add_generation_prompt=True).endswith("</think>\n\n")
    chat_format(tok).template_kwargs = {"enable_thinking": False}
    assert render(tok, prompt, add_generation_prompt=True).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_qwen3_reasoning_in_an_answer_is_refused_not_guessed():
    """Qwen3 cuts the reasoning out of an answer's content (and drops it from earlier turns):
    the content is rewritten, so the label span cannot be found exactly."""
    tok = _tok("qwen3")
    conv = [CONV[1], {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nred"}, CONV[3], CONV[4]]
    assert "hmm" not in render(tok, conv)
    with pytest.raises(DataError, match=r"mem:5: .*rewrites the content of message 1 \(assistant\)"):
        encode_chat(tok, conv, source="mem:5")


def test_llama3_date_is_today_unless_date_string_fixes_it(caplog):
    from datetime import datetime

    tok = _tok("llama3")
    assert f"Today Date: {datetime.now().strftime('%d %b %Y')}" in render(tok, CONV)
    chat_format(tok).template_kwargs = {"date_string": "26 Jul 2024"}
    assert "Today Date: 26 Jul 2024" in render(tok, CONV)


def test_gemma_without_system_role_merges_system_into_first_user_turn():
    tok = _tok("gemma")
    with pytest.raises(Exception, match="System role not supported"):
        tok.apply_chat_template(CONV, tokenize=False)
    text = render(tok, CONV)
    assert "<start_of_turn>user\nBe brief.\n\nIs it red?" in text
    ids, mask = encode_chat(tok, CONV)
    assert _labelled(tok, ids, mask) == ["red<end_of_turn>", "a<end_of_turn>"]


def test_omnimodal_template_offsets_match_the_generation_marker_mask():
    """Cross-check: on omnimodal's template (which has {% generation %} markers) the offsets
    method gives exactly transformers' own assistant-token mask."""
    from omnimodal.decoder import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["Is it red? Answer red or a colour. And the assistant? Be brief."], 300)
    ids, mask = encode_chat(tok, CONV)
    ref = tok.apply_chat_template(CONV, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert ids == ref["input_ids"] and mask == list(ref["assistant_masks"])


def test_template_that_rewrites_content_is_refused():
    tok = _tok("chatml")
    tok.chat_template = FAMILIES["chatml"].template.replace("message['content']", "message['content'][:5]")
    with pytest.raises(DataError, match=r"mem:7: cannot find the assistant label spans.*rewrites the content of message 1 \(user\)"):
        encode_chat(tok, CONV, source="mem:7")


def test_end_of_turn_missing_from_eos_list_is_an_error():
    tok = _tok("chatml")
    chat_format(tok).eos_ids = [tok.convert_tokens_to_ids("<|endoftext|>")]  # a base model's EOS only
    with pytest.raises(DataError, match=r"mem:3: assistant message 2: no end-of-turn token.*<\|im_end\|>"):
        encode_chat(tok, CONV, source="mem:3")


def test_empty_answer_labels_only_the_end_of_turn():
    tok = _tok("chatml")
    ids, mask = encode_chat(tok, [CONV[1], {"role": "assistant", "content": ""}])
    assert _labelled(tok, ids, mask) == ["<|im_end|>"]


# ---- choosing the template, keeping the tokenizer ---------------------------------------------
def test_pretrained_decoder_keeps_its_own_template_and_the_saved_model_too(tmp_path):
    from omnimodal.decoder import load_tokenizer
    from omnimodal.model import OmniModel

    path = make_decoder_dir(tmp_path / "dec", FAMILIES["chatml"])
    tok = load_tokenizer(str(path))
    assert tok.chat_template == FAMILIES["chatml"].template
    model = OmniModel.from_config({"decoder": {"kind": "pretrained", "path": str(path)}, "modalities": {}})
    model.save_pretrained(tmp_path / "saved")
    loaded = OmniModel.from_pretrained(tmp_path / "saved")
    assert loaded.tokenizer.chat_template == FAMILIES["chatml"].template
    assert END_TOKEN not in loaded.tokenizer.get_vocab()


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_base_model_without_template_gets_omnimodals_and_says_so(tmp_path, caplog, name):
    from omnimodal.decoder import load_tokenizer

    path = make_decoder_dir(tmp_path / "dec", FAMILIES[name], template=False)
    with caplog.at_level(logging.INFO, logger="omnimodal"):
        tok = load_tokenizer(str(path))
    assert "has no chat template (a base model): using omnimodal's" in caplog.text
    assert tok.chat_template.endswith(DEFAULT_CHAT_TEMPLATE)
    end = tok.convert_tokens_to_ids(END_TOKEN)
    assert end in chat_format(tok).eos_ids
    ids, mask = encode_chat(tok, CONV)
    # BOS behaviour kept: Llama-style plain encoding puts BOS first, so the template does too
    assert (ids[0] == tok.bos_token_id) == (FAMILIES[name].bos is not None)
    assert _labelled(tok, ids, mask) == [f"red{END_TOKEN}", f" a {END_TOKEN}"]


def test_template_modes(tmp_path):
    from omnimodal.decoder import load_tokenizer

    base = make_decoder_dir(tmp_path / "base", FAMILIES["chatml"], template=False)
    with pytest.raises(ConfigError, match="chat_template=own but its tokenizer has no chat template"):
        load_tokenizer(str(base), "own")
    chat = make_decoder_dir(tmp_path / "chat", FAMILIES["chatml"])
    assert load_tokenizer(str(chat), "omnimodal").chat_template == DEFAULT_CHAT_TEMPLATE
    assert load_tokenizer(str(chat), "own").chat_template == FAMILIES["chatml"].template
    with pytest.raises(ConfigError, match="must be one of auto, own, omnimodal"):
        settle_template(build_tokenizer(FAMILIES["chatml"]), "mine", "x")


@pytest.mark.parametrize("name", ["llama3", "gemma"])
def test_tokenizer_keeps_its_ids_special_tokens_and_bos(tmp_path, name):
    from transformers import AutoTokenizer

    from omnimodal.model import OmniModel

    from .conftest import tiny_vision_cfg

    path = make_decoder_dir(tmp_path / "dec", FAMILIES[name])
    original = AutoTokenizer.from_pretrained(path)
    model = OmniModel.from_config({"decoder": {"kind": "pretrained", "path": str(path)}, "modalities": {"vision": tiny_vision_cfg()}})
    tok = model.tokenizer
    vocab = tok.get_vocab()
    assert all(vocab[t] == i for t, i in original.get_vocab().items())
    assert tok.special_tokens_map == {**original.special_tokens_map, **({"pad_token": tok.pad_token} if original.pad_token is None else {})}
    assert tok("Is it red?")["input_ids"] == original("Is it red?")["input_ids"]  # BOS as before
    assert model.placeholder_ids["<image>"] == len(original)  # appended, nothing moved
    pid = model.placeholder_ids["<image>"]
    assert tok.added_tokens_decoder[pid].special and tok.decode([pid], skip_special_tokens=True) == ""


def test_chat_template_kwargs_are_saved_with_the_model(tmp_path, caplog):
    from omnimodal.model import OmniModel

    path = make_decoder_dir(tmp_path / "dec", FAMILIES["llama3"])
    with caplog.at_level(logging.WARNING, logger="omnimodal"):
        OmniModel.from_config({"decoder": {"kind": "pretrained", "path": str(path)}, "modalities": {}})
    assert "set decoder.chat_template_kwargs.date_string" in caplog.text
    cfg = {"decoder": {"kind": "pretrained", "path": str(path), "chat_template_kwargs": {"date_string": "26 Jul 2024"}}, "modalities": {}}
    model = OmniModel.from_config(cfg)
    ids, _ = encode_chat(model.tokenizer, CONV)
    model.save_pretrained(tmp_path / "saved")
    loaded = OmniModel.from_pretrained(tmp_path / "saved")
    assert chat_format(loaded.tokenizer).template_kwargs == {"date_string": "26 Jul 2024"}
    assert encode_chat(loaded.tokenizer, CONV)[0] == ids
    assert "Today Date: 26 Jul 2024" in loaded.tokenizer.decode(ids)
