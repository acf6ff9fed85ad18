"""GGUF files on the scratch decoder: tiny random Llama / Qwen2 models written to GGUF here, the
way llama.cpp's convert script writes them (Q and K permuted for llama), give the logits of
the transformers model they came from (float32), or of transformers' own GGUF loading of the
same file (quantized), and carry their tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import promptkit as pk
from promptkit.backends._base import GenerationConfig
from promptkit.errors import ConfigurationError
from promptkit.models._registry import models_dir

from .test_llama import make_hf_llama

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

# Hugging Face name pieces -> llama.cpp's, for the writer below.
TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def llama_cpp_permute(weights: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, as llama.cpp writes Q and K."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def gguf_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf_name.split(".", 3)  # model.layers.3.self_attn.q_proj.weight
    stem, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{TO_GGUF[stem]}.{kind}"


def write_gguf(
    folder: Path,
    path: Path,
    qtypes: dict[str, object],
    arch: str = "llama",
    chat_template: str | None = None,
) -> None:
    """The Hugging Face folder as llama.cpp's converter would write it. ``qtypes`` maps a
    GGUF name piece (``ffn_up``, ``token_embd``, ...; ``*`` for the rest) to the storage type
    of 2-D weights; 1-D tensors stay F32 as in llama.cpp. ``chat_template``: written as
    ``tokenizer.chat_template``."""
    config = json.loads((folder / "config.json").read_text())
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny test model")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_dimension_count(config["hidden_size"] // config["num_attention_heads"])
    vocab = json.loads((folder / "tokenizer.json").read_text())
    tokens = {index: name for name, index in vocab["model"]["vocab"].items()}
    special = {t["id"] for t in vocab["added_tokens"]}
    tokens.update({t["id"]: t["content"] for t in vocab["added_tokens"]})
    merges = [m if isinstance(m, str) else " ".join(m) for m in vocab["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list([tokens[i] for i in range(len(tokens))])
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    writer.add_token_merges(merges)
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_add_bos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue
        values = tensor.float().numpy()
        target = gguf_name(name)
        if arch == "llama" and ".attn_q." in target:
            values = llama_cpp_permute(values, heads, heads)
        elif arch == "llama" and ".attn_k." in target:
            values = llama_cpp_permute(values, heads, kv_heads)
        piece = target.split(".")[-2]
        qtype = qtypes.get(piece, qtypes.get("*", Q.F32)) if values.ndim == 2 else Q.F32
        if qtype in (Q.Q4_K, Q.Q6_K):  # gguf-py cannot quantize these: random blocks instead
            writer.add_tensor(target, random_k_blocks(values.shape, qtype), raw_dtype=qtype)
        elif qtype == Q.F32:
            writer.add_tensor(target, values)
        else:
            writer.add_tensor(target, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def random_k_blocks(shape: tuple[int, ...], qtype: object) -> np.ndarray:
    """Random K-quant blocks with small, finite scales (bytes as llama.cpp lays them out)."""
    rows, width = shape
    block_bytes = {Q.Q4_K: 144, Q.Q6_K: 210}[qtype]
    blocks = np.random.default_rng(0).integers(0, 256, (rows * width // 256, block_bytes))
    blocks = blocks.astype(np.uint8)
    scale = np.frombuffer(np.float16(2e-4).tobytes(), dtype=np.uint8)
    if qtype == Q.Q4_K:  # d and dmin (f16) open the block
        blocks[:, 0:2] = scale
        blocks[:, 2:4] = scale
    else:  # d (f16) closes the block
        blocks[:, -2:] = scale
    return blocks.reshape(rows, width // 256 * block_bytes)


def logits_of(backend, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return backend.model.logits(backend.model(ids))


def random_ids(vocab: int, length: int = 128) -> torch.Tensor:
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_float32_gguf_gives_the_original_models_logits(tmp_path, kind):
    """With exact weights, only the permutation (llama) and the names can go wrong: the logits
    must be those of the transformers model the file was written from."""
    folder = make_hf_llama(tmp_path / "hf", kind)
    write_gguf(folder, tmp_path / "model.gguf", {"*": Q.F32}, arch=kind)
    backend = pk.get_backend(f"scratch:{tmp_path / 'model.gguf'}", device="cpu")
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = random_ids(backend.model.config.vocab_size)
    with torch.no_grad():
        expected = reference(ids).logits
    assert float((logits_of(backend, ids) - expected).abs().max()) <= 1e-3


def test_reader_over_a_plain_array_reads_what_gguf_reads(tmp_path):
    """open_gguf's reader slices a plain ndarray view of the memory map (3x faster to parse):
    every field and every tensor's bytes must be gguf's own reader's."""
    from promptkit.backends.scratch._gguf import open_gguf

    folder = make_hf_llama(tmp_path / "hf", "llama")
    path = tmp_path / "model.gguf"
    write_gguf(folder, path, {"*": Q.Q4_1, "token_embd": Q.Q8_0}, chat_template="{{ x }}")
    ours, theirs = open_gguf(path), gguf.GGUFReader(str(path))
    assert type(ours.data) is np.ndarray and isinstance(theirs.data, np.memmap)
    assert list(ours.fields) == list(theirs.fields)
    for key, field in theirs.fields.items():
        assert ours.fields[key].contents() == field.contents(), key
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, reference in zip(ours.tensors, theirs.tensors, strict=True):
        assert mine.tensor_type == reference.tensor_type
        assert np.array_equal(mine.data, reference.data), mine.name


def test_unpermuting_is_needed_and_is_llama_cpps_inverse():
    from promptkit.backends.scratch._gguf import unpermute

    weight = torch.randn(4 * 8, 5)
    permuted = torch.from_numpy(llama_cpp_permute(weight.numpy(), 4, 4))
    assert not torch.equal(permuted, weight)
    assert torch.equal(unpermute(permuted, 4), weight)


@pytest.mark.parametrize(
    "qtypes",
    [
        {"*": Q.F16},
        {"*": Q.BF16},
        {"*": Q.Q8_0},
        {"*": Q.Q4_0, "token_embd": Q.Q8_0},
        {"*": Q.Q4_1, "token_embd": Q.Q8_0},
    ],
    ids=["F16", "BF16", "Q8_0", "Q4_0", "Q4_1"],
)
def test_quantized_gguf_gives_transformers_gguf_logits(tmp_path, qtypes):
    folder = make_hf_llama(tmp_path / "hf", "llama")
    write_gguf(folder, tmp_path / "model.gguf", qtypes)
    assert_same_as_transformers_gguf(tmp_path)


def test_k_quants_give_transformers_gguf_logits(tmp_path):
    shape = {"hidden_size": 256, "intermediate_size": 256, "num_hidden_layers": 1}
    folder = make_hf_llama(tmp_path / "hf", "llama", **shape)
    qtypes = {"ffn_gate": Q.Q4_K, "ffn_up": Q.Q6_K, "ffn_down": Q.Q4_K, "*": Q.Q8_0}
    write_gguf(folder, tmp_path / "model.gguf", qtypes)
    assert_same_as_transformers_gguf(tmp_path)


def assert_same_as_transformers_gguf(tmp_path: Path) -> None:
    backend = pk.get_backend(f"scratch:{tmp_path / 'model.gguf'}", device="cpu")
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file="model.gguf", dtype=torch.float32
    ).eval()
    ids = random_ids(backend.model.config.vocab_size)
    with torch.no_grad():
        expected = reference(ids).logits
    assert float((logits_of(backend, ids) - expected).abs().max()) <= 1e-3


def test_gguf_tokenizer_matches_the_models_own(tmp_path):
    folder = make_hf_llama(tmp_path / "hf", "llama")
    write_gguf(folder, tmp_path / "model.gguf", {"*": Q.F32})
    backend = pk.get_backend(f"scratch:{tmp_path / 'model.gguf'}", device="cpu")
    original = pk.get_backend(f"scratch:{folder}", device="cpu")
    text = 'Dr. Hanna Berg, 58, practises in Bergen. {"name": "Olu"} <|endoftext|>'
    assert backend.tokenizer.encode(text) == original.tokenizer.encode(text)
    assert backend.tokenizer.eot_id == original.tokenizer.eot_id
    assert backend.weights_path == tmp_path / "model.gguf"
    config = GenerationConfig(max_tokens=6)
    assert backend.generate("Hello", config).text == original.generate("Hello", config).text


def test_unsupported_architecture_is_named(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "falcon.gguf"), "falcon")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConfigurationError, match="GGUF architecture 'falcon' is not supported"):
        pk.get_backend(f"scratch:{tmp_path / 'falcon.gguf'}", device="cpu")


def test_missing_tensor_or_metadata_is_named(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "bare.gguf"), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConfigurationError, match="no tensor 'blk.0.attn_q.weight'"):
        pk.get_backend(f"scratch:{tmp_path / 'bare.gguf'}", device="cpu")
    writer = gguf.GGUFWriter(str(tmp_path / "nohead.gguf"), "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((8, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ConfigurationError, match="lacks llama.attention.head_count"):
        pk.get_backend(f"scratch:{tmp_path / 'nohead.gguf'}", device="cpu")


def test_not_a_gguf_file_is_a_configuration_error(tmp_path):
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ConfigurationError, match="not a readable GGUF file"):
        pk.get_backend(f"scratch:{tmp_path / 'broken.gguf'}", device="cpu")


def test_hf_backend_runs_the_same_gguf_file(tmp_path):
    folder = make_hf_llama(tmp_path / "hf", "llama")
    write_gguf(folder, tmp_path / "model.gguf", {"*": Q.Q8_0})
    scratch = pk.get_backend(f"scratch:{tmp_path / 'model.gguf'}", device="cpu")
    hf = pk.get_backend(f"hf:{tmp_path / 'model.gguf'}", device="cpu")
    assert hf.folder == tmp_path / "model.gguf"
    config = GenerationConfig(max_tokens=8)
    assert hf.generate("Hello there", config).text == scratch.generate("Hello there", config).text
    assert hf.loglikelihood("The sky", " is blue") == pytest.approx(
        scratch.loglikelihood("The sky", " is blue"), abs=1e-3
    )


def test_registry_names_on_both_backends_are_offline_errors_when_not_pulled():
    for spec in ("scratch:smollm2", "hf:smollm2-135m-instruct"):
        with pytest.raises(ConfigurationError, match="PROMPTKIT_OFFLINE is set"):
            pk.get_backend(spec, device="cpu")


def test_converted_tokenizer_is_kept_in_the_model_cache(tmp_path, monkeypatch):
    from promptkit.backends.scratch import _gguf as gguf_module

    folder = make_hf_llama(tmp_path / "hf", "llama")
    path = tmp_path / "model.gguf"
    write_gguf(folder, path, {"*": Q.F32})
    first = gguf_module.gguf_tokenizer(path)
    kept = list((models_dir() / ".gguf-tokenizers").glob("*.json"))
    assert len(kept) == 1

    def no_conversion(path: Path) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_module, "_convert_tokenizer", no_conversion)
    again = gguf_module.gguf_tokenizer(path)
    text = "Dr. Hanna Berg, 58, practises in Bergen."
    assert again.encode(text) == first.encode(text) and again.eot_id == first.eot_id
    write_gguf(folder, path, {"*": Q.F16})  # a new file at the same path: converted anew
    with pytest.raises(AssertionError, match="converted again"):
        gguf_module.gguf_tokenizer(path)
