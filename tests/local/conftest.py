from __future__ import annotations

import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import promptkit  # noqa: E402
from promptkit.backends.scratch._tokenizer import Tokenizer  # noqa: E402

GPT2_TOKENIZER = Path(__file__).resolve().parents[3] / "shared" / "data" / "gpt2-tokenizer"
MINI_TOKENIZER = Path(promptkit.__file__).resolve().parent / "models" / "mini" / "tokenizer.json"
CORPUS = (
    "The quick brown fox jumps over the lazy dog. "
    "A journey of a thousand miles begins with a single step. "
    "To be, or not to be, that is the question. "
) * 20


def tokenizer_files(folder: Path, *, mini: bool = False) -> Tokenizer:
    """GPT-2's real tokenizer when ../shared/data is present, else promptkit-mini's (shipped in
    the package: a 2,048-token BPE of English and JSON), so a fresh clone runs every test.
    ``mini``: promptkit-mini's in any case."""
    folder.mkdir(parents=True, exist_ok=True)
    if not mini and (GPT2_TOKENIZER / "tokenizer.json").is_file():
        for name in ("tokenizer.json", "vocab.json", "merges.txt"):
            shutil.copy(GPT2_TOKENIZER / name, folder / name)
    else:
        shutil.copy(MINI_TOKENIZER, folder / "tokenizer.json")
    return Tokenizer.from_folder(folder)


def make_hf_gpt2(folder: Path, *, mini_tokenizer: bool = False, **config: int) -> Path:
    """A randomly initialised transformers GPT-2, saved with save_pretrained, plus tokenizer
    (promptkit-mini's when ``mini_tokenizer``, else as :func:`tokenizer_files` chooses)."""
    tokenizer = tokenizer_files(folder, mini=mini_tokenizer)
    torch.manual_seed(0)
    options = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 128}
    options.update(config)
    hf_config = transformers.GPT2Config(
        vocab_size=tokenizer.vocab_size,
        bos_token_id=tokenizer.eot_id,
        eos_token_id=tokenizer.eot_id,
        **options,
    )
    transformers.GPT2LMHeadModel(hf_config).eval().save_pretrained(folder)
    return folder


def object_schema(properties: dict[str, dict], required: list[bool]) -> dict:
    """A JSON schema object of ``properties``, each required where ``required`` says (in order)."""
    names = list(properties)
    return {
        "type": "object",
        "properties": properties,
        "required": [n for n, r in zip(names, required, strict=False) if r],
    }


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hf_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def hf_model(hf_folder: Path):
    return transformers.GPT2LMHeadModel.from_pretrained(hf_folder).eval()


@pytest.fixture(scope="session")
def backend(hf_folder: Path):
    import promptkit as pk

    return pk.get_backend(f"scratch:{hf_folder}", device="cpu")
