"""Tiny random-weight GGUF models built locally.

They exist so the real llama.cpp code path (tokenizer, chat template, grammar
sampling, pooling) can be exercised offline in tests and demos without
downloading anything. The weights are meaningless; only the plumbing is real.
"""

from __future__ import annotations

import pathlib
import string

import numpy as np

_PUNCT = string.punctuation
_WORDS = """
the of and to in is it that for on was with as be by at this have from or an
are not but had they his her she he we you i my me your our their them there
what which who when where why how all any some one two three four five six
seven eight nine ten first last new old good bad big small long short high low
day time year week month today tomorrow yesterday people man woman child friend
family name home house work job school city country world water food coffee tea
like likes love loves hate want need know think said say says go goes went come
came see saw make made take took get got give gave use used find found tell told
ask asked feel felt live lives lived move moved meet met call called remember
prefer prefers about after before again also always never often sometimes now
then here very much more most many less only just still even well back up down
out over under into off no yes do does did done can could will would should may
might must if so than too because while until since hello hi world another text
memory note fact user assistant question answer red blue green black white dog
cat car book music movie game phone email birthday meeting project plan trip
""".split()
_SUFFIXES = "s es ed ing er est ly ion tion ment ness able ful less".split()

_CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _writer(path, arch: str, name: str):
    import gguf  # imported lazily: only needed when a model is actually generated

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    return gguf, w, path


def _finish(w, path: pathlib.Path) -> pathlib.Path:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _f32(rng: np.random.Generator, shape, scale: float) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _wordpiece_vocab() -> list[str]:
    # llama.cpp's WPM tokenizer expects the converted "phantom space" form:
    # word-initial pieces carry a U+2581 prefix, "##" continuations are bare.
    chars = string.ascii_lowercase + string.digits + _PUNCT
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "\u2581"]
    pieces += ["\u2581" + c for c in chars] + list(chars)
    pieces += ["\u2581" + w for w in _WORDS] + _SUFFIXES
    return list(dict.fromkeys(pieces))


def write_embedding_model(path, *, dim: int = 32, seed: int = 0, chat_template: str | None = None) -> pathlib.Path:
    """Write a BERT-style mean-pooling embedding model of width ``dim`` (with a `chat_template`, if given).

    Token embeddings dominate position embeddings so that different words give
    clearly different sentence vectors even with random weights.
    """
    n_layer, n_head, n_ctx, n_ff = 2, 2, 512, 2 * dim
    if dim % n_head:
        raise ValueError("dim must be even")
    gguf, w, path = _writer(path, "bert", "memr1-tiny-embed")
    rng = np.random.default_rng(seed)
    tokens = _wordpiece_vocab()
    tt = gguf.TokenType
    types = [tt.CONTROL] * 5 + [tt.NORMAL] * (len(tokens) - 5)
    types[1] = tt.UNKNOWN

    w.add_context_length(n_ctx)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(n_ff)
    w.add_block_count(n_layer)
    w.add_head_count(n_head)
    w.add_layer_norm_eps(1e-12)
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.MEAN)

    if chat_template is not None:  # embedding models rarely have one, but a file may carry anything
        w.add_chat_template(chat_template)
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_type_count(2)
    w.add_pad_token_id(0)
    w.add_unk_token_id(1)
    w.add_bos_token_id(2)  # llama.cpp uses BOS as [CLS]
    w.add_sep_token_id(3)
    w.add_mask_token_id(4)
    w.add_add_bos_token(True)
    w.add_add_sep_token(True)

    ones, zeros = np.ones(dim, np.float32), np.zeros(dim, np.float32)
    w.add_tensor("token_embd.weight", _f32(rng, (len(tokens), dim), 1.0))
    w.add_tensor("token_types.weight", _f32(rng, (2, dim), 0.02))
    w.add_tensor("position_embd.weight", _f32(rng, (n_ctx, dim), 0.1))
    w.add_tensor("token_embd_norm.weight", ones)
    w.add_tensor("token_embd_norm.bias", zeros)
    s = dim**-0.5
    for i in range(n_layer):
        b = f"blk.{i}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(b + name + ".weight", _f32(rng, (dim, dim), s))
            w.add_tensor(b + name + ".bias", _f32(rng, dim, 0.02))
        w.add_tensor(b + "attn_output_norm.weight", ones)
        w.add_tensor(b + "attn_output_norm.bias", zeros)
        w.add_tensor(b + "ffn_up.weight", _f32(rng, (n_ff, dim), s))
        w.add_tensor(b + "ffn_up.bias", _f32(rng, n_ff, 0.02))
        w.add_tensor(b + "ffn_down.weight", _f32(rng, (dim, n_ff), n_ff**-0.5))
        w.add_tensor(b + "ffn_down.bias", _f32(rng, dim, 0.02))
        w.add_tensor(b + "layer_output_norm.weight", ones)
        w.add_tensor(b + "layer_output_norm.bias", zeros)
    return _finish(w, path)


def _byte_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable-unicode map used by byte-level BPE.
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = list(bs), 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


# GGUF merge strings ("left right"); the merged tokens are added to the vocab.
_MERGES = [m.split("|") for m in 'Ġ|t h|e i|n e|r a|n o|n Ġ|a r|e Ġ|s e|n Ġ|w Ġt|he Ġ|Ġ {|" "|: "|} "|,'.split()]
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def write_chat_model(
    path, *, seed: int = 0, n_layer: int = 2, n_embd: int = 64, n_ctx: int = 4096, chat_template: str = _CHATML_TEMPLATE
) -> pathlib.Path:
    """Write a LLaMA-style chat model with a byte-level BPE vocab and ChatML (or another `chat_template`).

    Every byte has its own token so any UTF-8 text (and any grammar-permitted
    output) is representable. Residual channel 0 is held constant so that
    column 0 of ``output.weight`` acts roughly as a per-token logit bias: it
    makes closing quotes and ``<|im_end|>`` likely enough that grammar-
    constrained JSON terminates within a few dozen tokens, while the rest
    stays random and seed-dependent.
    """
    n_head, n_ff = 4, 2 * n_embd
    if n_embd % (2 * n_head):
        raise ValueError("n_embd must be a multiple of 8")
    head_dim = n_embd // n_head
    gguf, w, path = _writer(path, "llama", "memr1-tiny-chat")
    rng = np.random.default_rng(seed)

    b2u = _byte_to_unicode()
    tokens = [b2u[b] for b in range(256)] + [a + b for a, b in _MERGES] + _SPECIALS
    tokens = list(dict.fromkeys(tokens))
    tt = gguf.TokenType
    types = [tt.NORMAL] * (len(tokens) - len(_SPECIALS)) + [tt.CONTROL] * len(_SPECIALS)
    ids = {t: i for i, t in enumerate(tokens)}
    eot, im_start, im_end = (ids[t] for t in _SPECIALS)
    n_vocab = len(tokens)

    w.add_vocab_size(n_vocab)
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_block_count(n_layer)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{a} {b}" for a, b in _MERGES])
    w.add_bos_token_id(eot)
    w.add_eos_token_id(im_end)
    w.add_eot_token_id(im_end)
    w.add_pad_token_id(eot)
    w.add_add_bos_token(False)
    w.add_chat_template(chat_template)

    # Per-token logit bias, random around a shape that favours short ASCII strings.
    bias = rng.normal(0.0, 0.5, n_vocab)
    for byte in range(256):
        ch = chr(byte)
        if ch.isascii() and (ch.isalnum() or ch == " "):
            bias[byte] += 1.0
        elif byte >= 0x80:
            bias[byte] -= 2.0
        elif byte < 0x20:  # llama-cpp-python's JSON grammar lets raw control chars into strings
            bias[byte] -= 4.0
    bias[ord('"')] += 4.5  # not the '"}' merge: it would also *open* strings
    bias[im_end] += 4.0
    bias[[eot, im_start]] -= 8.0

    emb = _f32(rng, (n_vocab, n_embd), 1.0)
    emb[:, 0] = 1.0
    out = _f32(rng, (n_vocab, n_embd), 1.5 / np.sqrt(n_embd))
    out[:, 0] = bias

    w.add_tensor("token_embd.weight", emb)
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("output.weight", out)
    s, sf = n_embd**-0.5, n_ff**-0.5
    for i in range(n_layer):
        b = f"blk.{i}."
        wo, down = _f32(rng, (n_embd, n_embd), 0.5 * s), _f32(rng, (n_embd, n_ff), 0.5 * sf)
        wo[0] = down[0] = 0.0  # keep the bias channel constant
        w.add_tensor(b + "attn_norm.weight", np.ones(n_embd, np.float32))
        w.add_tensor(b + "attn_q.weight", _f32(rng, (n_embd, n_embd), s))
        w.add_tensor(b + "attn_k.weight", _f32(rng, (n_embd, n_embd), s))
        w.add_tensor(b + "attn_v.weight", _f32(rng, (n_embd, n_embd), s))
        w.add_tensor(b + "attn_output.weight", wo)
        w.add_tensor(b + "ffn_norm.weight", np.ones(n_embd, np.float32))
        w.add_tensor(b + "ffn_gate.weight", _f32(rng, (n_ff, n_embd), s))
        w.add_tensor(b + "ffn_up.weight", _f32(rng, (n_ff, n_embd), s))
        w.add_tensor(b + "ffn_down.weight", down)
    return _finish(w, path)
