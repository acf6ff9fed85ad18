"""The Hugging Face backend: any transformers causal LM of the GPT-2 family (``hf:NAME_OR_PATH``).

Generation goes through transformers' own ``generate`` (a prompt and seed give the text
transformers gives), batched with left padding and streamed through its
``TextIteratorStreamer``; sampling draws from a ``torch.Generator`` of the call's own, so a seed
gives the same text whatever else the process does, and no global generator is touched. Scoring
shares :class:`~promptkit.backends._local.LocalScoring` with the scratch backend, so both score
the same weights identically. Loaded models are kept for reuse, the
:data:`MODEL_CACHE_SIZE` most recently used ones.

A hub name is looked up in the local hub cache first (no network); a model that is not there is
fetched, once one request without retries (huggingface_hub's own metadata call, which honours
``HF_HUB_ETAG_TIMEOUT``) says whether the hub answers at all, so an unreachable hub or
``HF_HUB_OFFLINE`` fails at once with one line.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from ..errors import BackendError, ConfigurationError
from ._base import Completion, GenerationConfig, Usage, cut_at_stop
from ._local import LOCAL_CAPABILITIES, LocalScoring, folder_fingerprint, safe_prefix, sample_next
from ._masking import TokenMasker, llg_tokenizer

__all__ = ["GrammarLogitsProcessor", "HFBackend", "from_spec", "load_model"]

MODEL_CACHE_SIZE = 2  # loaded models kept for reuse (least recently used evicted first)
_CACHE: OrderedDict[tuple[str, str, str], _Loaded] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class _Tokenizer:
    """The slice of a transformers tokenizer that scoring needs."""

    def __init__(self, hf_tokenizer: Any):
        self.hf = hf_tokenizer
        if hf_tokenizer.eos_token_id is None:
            raise ConfigurationError("the tokenizer has no end-of-text (eos) token")
        self.eot_id: int = hf_tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.hf.decode(list(ids), skip_special_tokens=False))


class _Abandoned(StoppingCriteria):
    """Stops ``generate`` once ``event`` is set (a streaming reader has gone)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = self.event.is_set()
        return torch.full((input_ids.size(0),), done, dtype=torch.bool, device=input_ids.device)


class GrammarLogitsProcessor(LogitsProcessor):
    """transformers' hook onto promptkit's :class:`~promptkit.backends._masking.TokenMasker`.

    Pass it to ``model.generate(..., logits_processor=LogitsProcessorList([processor]))`` with
    ``max_new_tokens`` equal to the masker's ``max_tokens``. Each call feeds the tokens sampled
    at the previous step to the matchers, then masks what may not come next; rows whose answer
    is complete may only end (EOS). The mask alone keeps answers inside the budget only near its
    end: transformers' own sampler cannot be asked to draw again a token that commits to more
    than the budget holds, which :class:`HFBackend` does (``masker.sample``).
    """

    def __init__(self, masker: TokenMasker, prompt_width: int):
        self.masker = masker
        self.prompt_width = prompt_width
        self.done = [False] * len(masker.rows)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.size(1) > self.prompt_width:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                if self.done[row]:
                    continue
                self.masker.advance(row, token)
                if token == self.masker.eos:
                    self.done[row] = True
        live = [row for row in range(len(self.done)) if not self.done[row]]
        if live:
            self.masker.apply(scores, live)
        return scores

    def complete(self, sequences: torch.Tensor) -> list[bool]:
        """After ``generate``: feed the last tokens and say which rows' answers are complete."""
        if sequences.size(1) > self.prompt_width:
            for row, token in enumerate(sequences[:, -1].tolist()):
                if not self.done[row]:
                    self.masker.advance(row, token)
                    self.done[row] = token == self.masker.eos
        return [self.done[row] or self.masker.finished(row) for row in range(len(self.done))]


class _SamplingProcessor(LogitsProcessor):
    """Samples each row's next token with the call's own generators (temperature, top-k and
    top-p as on the scratch backend) and leaves only that token possible, so that
    transformers' greedy step takes it: no global random state is read or changed. With the
    grammar's ``masker``, a token that would not leave room to end the answer is drawn again
    (:meth:`TokenMasker.sample`)."""

    def __init__(
        self,
        config: GenerationConfig,
        generators: list[torch.Generator] | None,
        masker: TokenMasker | None = None,
        done: list[bool] | None = None,
    ):
        self.config = config
        self.generators = generators
        self.masker = masker
        self.done = done

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.masker is None:
            chosen = sample_next(scores, self.config, self.generators)  # (B,)
        else:
            live = [row for row, done in enumerate(self.done or []) if not done]
            chosen = self.masker.sample(scores, live, self.config, self.generators)
        only = torch.full_like(scores, float("-inf"))
        return only.scatter_(1, chosen[:, None], 0.0)


class _Loaded:
    """A loaded model, its tokenizer and the folder its files came from (None: unknown)."""

    def __init__(self, model: Any, tokenizer: Any, folder: Path | None):
        self.model = model
        self.tokenizer = tokenizer
        self.folder = folder


class HFBackend(LocalScoring):
    """A transformers causal LM: generate (batched), stream, loglikelihood, perplexity."""

    def __init__(
        self, model: Any, hf_tokenizer: Any, *, name: str = "hf", folder: Path | None = None
    ):
        self.model = model.eval()
        self.tokenizer = _Tokenizer(hf_tokenizer)
        self.name = name
        self.folder = folder  # where the model's files are (a local folder or a hub snapshot)
        config = model.config
        self.context_window = getattr(config, "n_positions", None) or getattr(
            config, "max_position_embeddings", None
        )
        self.capabilities = LOCAL_CAPABILITIES

    @property
    def device(self) -> torch.device:
        return torch.device(self.model.device)

    def cache_identity(self) -> dict[str, Any]:
        """The weights (every file of the model's folder: path, size and modification time;
        a hub snapshot's path holds its commit), the dtype and the device type. An adapter
        saved in the folder is one of its files."""
        files = folder_fingerprint(self.folder) if self.folder is not None else None
        return {
            **super().cache_identity(),
            "folder": None if self.folder is None else str(self.folder.resolve()),
            "files": files,
            "model": None if files is not None else type(self.model).__qualname__,
            "dtype": str(self.model.dtype),
            "device": self.device.type,
        }

    def _hidden_states(self, ids: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.model.base_model(input_ids=ids).last_hidden_state
        return hidden

    def _output_matrix(self) -> torch.Tensor:
        weight: torch.Tensor = self.model.get_output_embeddings().weight
        return weight.t()

    def generate_kwargs(self, config: GenerationConfig) -> dict[str, Any]:
        """Our GenerationConfig as arguments of transformers' ``generate``."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": config.max_tokens,
            "pad_token_id": self.tokenizer.eot_id,
            "eos_token_id": self.tokenizer.eot_id,
            "do_sample": False,  # sampling is the _SamplingProcessor's, with its own generators
        }
        if config.stops:
            kwargs.update(stop_strings=list(config.stops), tokenizer=self.tokenizer.hf)
        return kwargs

    def grammar_processor(
        self, config: GenerationConfig, batch: int, prompt_width: int
    ) -> GrammarLogitsProcessor:
        """The logits processor that constrains ``generate`` to ``config.grammar``."""
        vocab = int(self.model.get_output_embeddings().weight.size(0))
        tokenizer = llg_tokenizer(self.tokenizer.hf, self._llguidance_tokenizer, vocab)
        masker = TokenMasker.for_request(config, tokenizer, batch=batch, vocab_size=vocab)
        return GrammarLogitsProcessor(masker, prompt_width)

    def _llguidance_tokenizer(self, vocab_size: int) -> Any:
        from llguidance.hf import from_tokenizer

        try:
            return from_tokenizer(
                self.tokenizer.hf, n_vocab=vocab_size, eos_token=self.tokenizer.eot_id
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"{self.name}: constrained decoding needs a fast (Rust) tokenizer: {exc}"
            ) from None

    def _call_kwargs(self, inputs: dict[str, Any], config: GenerationConfig) -> dict[str, Any]:
        """Everything ``generate`` gets for these inputs: ids, options, the grammar and the
        sampler (the grammar's mask comes first, so that only allowed tokens are drawn)."""
        kwargs = {**inputs, **self.generate_kwargs(config)}
        ids = inputs["input_ids"]
        processors: list[LogitsProcessor] = []
        grammar: GrammarLogitsProcessor | None = None
        if config.grammar is not None:
            grammar = self.grammar_processor(config, ids.size(0), ids.size(1))
            processors.append(grammar)
        generators: list[torch.Generator] | None = None
        if config.temperature > 0:
            generators = []
            for _ in range(ids.size(0)):  # one per row: each prompt draws as it would alone
                generator = torch.Generator(device=self.device)
                if config.seed is None:
                    generator.seed()
                else:
                    generator.manual_seed(config.seed)
                generators.append(generator)
        if grammar is not None:  # also when greedy: a token must leave room to end
            processors.append(_SamplingProcessor(config, generators, grammar.masker, grammar.done))
        elif generators is not None:
            processors.append(_SamplingProcessor(config, generators))
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        return kwargs

    def _inputs(self, prompts: Sequence[str], config: GenerationConfig) -> dict[str, Any]:
        """Token ids and attention mask of the prompts, left-padded with end-of-text (done
        here, so the shared tokenizer's padding settings are never changed)."""
        for prompt in prompts:
            self._check_text(prompt)
        encoded = [self.tokenizer.encode(prompt) for prompt in prompts]
        self.check_fits([len(ids) for ids in encoded], config)
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), self.tokenizer.eot_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            if ids:
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention_mask[row, width - len(ids) :] = 1
        return {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
        }

    def generate_batch(
        self, prompts: Sequence[str], config: GenerationConfig | None = None
    ) -> list[Completion]:
        """Generate for several prompts at once (left padding, one ``generate`` call)."""
        config = config or GenerationConfig()
        inputs = self._inputs(prompts, config)
        kwargs = self._call_kwargs(inputs, config)
        with torch.inference_mode():
            output = self.model.generate(**kwargs)
        width = inputs["input_ids"].size(1)
        grammar = [
            p for p in kwargs.get("logits_processor", []) if isinstance(p, GrammarLogitsProcessor)
        ]
        complete = grammar[0].complete(output) if grammar else [False] * len(output)
        completions = []
        for row, prompt_mask, grammar_done in zip(
            output[:, width:].tolist(), inputs["attention_mask"], complete, strict=True
        ):
            ended = self.tokenizer.eot_id in row
            new = row[: row.index(self.tokenizer.eot_id)] if ended else row
            text, stopped = cut_at_stop(self.tokenizer.decode(new), config.stops)
            usage = Usage(prompt_tokens=int(prompt_mask.sum()), completion_tokens=len(new))
            completions.append(
                Completion(
                    text=text,
                    usage=usage,
                    finish_reason="stop" if ended or stopped or grammar_done else "length",
                )
            )
        return completions

    def generate_tokens(
        self, prompt_ids: Sequence[int], config: GenerationConfig
    ) -> tuple[list[int], Literal["stop", "length"]]:
        """Token-level generation (see LocalScoring.generate_tokens)."""
        self.check_fits([len(prompt_ids)], config)
        ids = torch.tensor([list(prompt_ids)], device=self.device)
        kwargs = self._call_kwargs(
            {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, config
        )
        with torch.inference_mode():
            row = self.model.generate(**kwargs)[0, len(prompt_ids) :].tolist()
        eot = self.tokenizer.eot_id
        if eot in row:
            return row[: row.index(eot) + 1], "stop"
        stopped = cut_at_stop(self.tokenizer.decode(row), config.stops)[1]
        return row, "stop" if stopped else "length"

    def _stream_complete(
        self, text: str, config: GenerationConfig
    ) -> Generator[str, None, Completion]:
        """Yield the text in pieces; return the whole Completion (its usage and finish reason,
        which a streaming server reports at the end)."""
        from transformers import TextIteratorStreamer

        inputs = self._inputs([text], config)
        streamer = TextIteratorStreamer(
            self.tokenizer.hf, skip_prompt=True, skip_special_tokens=True
        )
        abandoned = threading.Event()  # the reader closed the stream: stop generating
        kwargs = {
            **self._call_kwargs(inputs, config),
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([_Abandoned(abandoned)]),
        }
        failures: list[BaseException] = []
        outputs: list[torch.Tensor] = []
        worker = threading.Thread(
            target=self._generate_into, args=(kwargs, streamer, failures, outputs), daemon=True
        )
        worker.start()
        try:
            final = yield from self._pieces(streamer, config)
        finally:
            abandoned.set()
            worker.join()
        if failures:
            raise BackendError(f"generation failed: {failures[0]}", backend=self.name) from (
                failures[0]
            )
        width = inputs["input_ids"].size(1)
        new = outputs[0][0, width:].tolist()
        ended = self.tokenizer.eot_id in new
        kept = new[: new.index(self.tokenizer.eot_id)] if ended else new
        grammar = [
            p for p in kwargs.get("logits_processor", []) if isinstance(p, GrammarLogitsProcessor)
        ]
        grammar_done = bool(grammar) and grammar[0].complete(outputs[0])[0]
        stopped = cut_at_stop(self.tokenizer.decode(kept), config.stops)[1]
        return Completion(
            text=final,
            usage=Usage(prompt_tokens=width, completion_tokens=len(kept)),
            finish_reason="stop" if ended or stopped or grammar_done else "length",
        )

    @staticmethod
    def _pieces(streamer: Any, config: GenerationConfig) -> Generator[str, None, str]:
        """The streamer's text, cut at the first stop sequence and held back while it may be
        the start of one; returns the whole text."""
        received, sent = "", 0
        for piece in streamer:
            received += piece
            cut, stopped = cut_at_stop(received, config.stops)
            ready = cut if stopped else safe_prefix(received, config.stops)
            if len(ready) > sent:
                yield ready[sent:]
                sent = len(ready)
            if stopped:
                for _ in streamer:  # let generation finish: it stops at the stop string too
                    pass
                break
        final, _ = cut_at_stop(received, config.stops)
        if len(final) > sent:
            yield final[sent:]
        return final

    def _generate_into(
        self,
        kwargs: dict[str, Any],
        streamer: Any,
        failures: list[BaseException],
        outputs: list[torch.Tensor],
    ) -> None:
        """Run ``generate`` feeding ``streamer`` and keep its output; on failure, record it
        and end the stream."""
        try:
            with torch.inference_mode():
                outputs.append(self.model.generate(**kwargs))
        except Exception as exc:
            failures.append(exc)
            streamer.end()


def load_model(
    name_or_path: str, *, device: str | None = None, dtype: str | None = None
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer (reused while among the :data:`MODEL_CACHE_SIZE`
    most recently used); raises ConfigurationError."""
    loaded = _load_cached(name_or_path, device, dtype)
    return loaded.model, loaded.tokenizer


def _load_cached(name_or_path: str, device: str | None, dtype: str | None) -> _Loaded:
    chosen_device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    key = (name_or_path, chosen_device, dtype or "float32")
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        loaded = _load(*key)
        _CACHE[key] = loaded
        while len(_CACHE) > MODEL_CACHE_SIZE:
            _CACHE.popitem(last=False)
        return loaded


def _offline() -> bool:
    """Whether the hub must not be asked: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) now,
    or huggingface_hub's own reading of it at import."""
    from huggingface_hub import constants

    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    said = any(os.environ.get(n, "").lower() in ("1", "true", "yes", "on") for n in names)
    return said or constants.is_offline_mode()


def _load(name_or_path: str, device: str, dtype: str) -> _Loaded:
    """Load from a local folder, else from the local hub cache, else (unless offline) from the
    hub once :func:`_check_hub` finds it answering; raises ConfigurationError in one line."""
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ConfigurationError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    folder = Path(os.path.expanduser(name_or_path))
    if folder.is_file() and folder.suffix == ".gguf":  # transformers dequantizes it to dtype
        model, tokenizer = _load_gguf(folder, device, torch_dtype)
        return _Loaded(model, tokenizer, folder)
    if folder.is_dir():
        _check_folder(folder)
        where = f"the local folder {str(folder)!r}"
    else:
        where = "the Hugging Face hub cache" + (" (HF_HUB_OFFLINE is set)" if _offline() else "")
    try:
        model, tokenizer = _from_pretrained(name_or_path, torch_dtype, local=True)
    except (OSError, ValueError) as exc:
        if folder.is_dir() or _offline():
            raise ConfigurationError(
                f"hf: cannot load model {name_or_path!r} from {where}: {_first_line(exc)}. "
                "Download it once where the network allows (it is then cached), or point hf: "
                "at a local folder holding config.json, the weights and the tokenizer files"
            ) from None
        _check_hub(name_or_path)
        try:
            model, tokenizer = _from_pretrained(name_or_path, torch_dtype, local=False)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"hf: cannot load {name_or_path!r} from the Hugging Face hub: {_first_line(exc)}"
            ) from None
    source = folder if folder.is_dir() else _snapshot(name_or_path)
    return _Loaded(model.to(device).eval(), tokenizer, source)


def _from_pretrained(name_or_path: str, dtype: torch.dtype, *, local: bool) -> tuple[Any, Any]:
    """transformers' model and tokenizer (``local``: only files already on this machine).

    Raises what transformers raises (OSError, ValueError) for files it cannot have, and
    ConfigurationError for a model that is not a causal language model.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(name_or_path, local_files_only=local)
    if getattr(config, "is_encoder_decoder", False) or config.model_type in (
        "bert",
        "roberta",
        "distilbert",
        "t5",
    ):
        raise ConfigurationError(
            f"hf: {name_or_path!r} is a {config.model_type!r} model, not a causal language "
            "model; hf: runs decoder-only models such as gpt2 or distilgpt2"
        )
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local)
    model: Any = AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=dtype, local_files_only=local
    )
    return model, tokenizer


def _snapshot(name: str) -> Path | None:
    """The hub cache's snapshot folder of ``name`` (its path holds the commit), or None."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(name, "config.json")
    except HFValidationError:  # not a repository name: nothing is cached under it
        return None
    return Path(found).parent if isinstance(found, str) else None


def _check_hub(name: str) -> None:
    """One request without retries (huggingface_hub's metadata call for the model's
    config.json, within ``HF_HUB_ETAG_TIMEOUT``): ConfigurationError, in one line, when the hub
    cannot be reached or has no such model, before transformers' downloads would retry."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HFValidationError

    try:
        get_hf_file_metadata(hf_hub_url(name, "config.json"), timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HFValidationError as exc:
        raise ConfigurationError(
            f"hf: {name!r} is neither a local folder nor a hub model name ({_first_line(exc)})"
        ) from None
    except Exception as exc:  # unreachable, timed out, not found, gated: all end the load here
        raise ConfigurationError(
            f"hf: cannot fetch {name!r} from the Hugging Face hub at {constants.ENDPOINT} and it "
            f"is not in the local hub cache ({type(exc).__name__}: {_first_line(exc)}); "
            "download it once where the network allows, point hf: at a local folder, or set "
            "HF_HUB_OFFLINE=1 to use only cached models"
        ) from None


def _load_gguf(path: Path, device: str, torch_dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch_dtype
        )
    except (OSError, ValueError, ImportError) as exc:
        raise ConfigurationError(
            f"hf: cannot load the GGUF file {str(path)!r}: {_first_line(exc)} (transformers "
            "needs the gguf package for GGUF files: pip install gguf)"
        ) from None
    loaded: Any = model
    return loaded.to(device).eval(), tokenizer


def _check_folder(folder: Path) -> None:
    found = sorted(p.name for p in folder.iterdir())
    if not (folder / "config.json").is_file():
        raise ConfigurationError(
            f"hf: the folder {str(folder)!r} has no config.json (found: "
            f"{', '.join(found) or 'nothing'}); it needs config.json, the weights "
            "(model.safetensors) and the tokenizer files"
        )
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise ConfigurationError(
            f"hf: the folder {str(folder)!r} has no weights (found: {', '.join(found)}); "
            f"expected one of {', '.join(_WEIGHT_FILES)}"
        )


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def from_spec(
    arg: str, *, device: str | None = None, dtype: str | None = None, **options: Any
) -> HFBackend:
    """``hf:NAME_OR_PATH`` with optional ``device=`` and ``dtype=`` (default float32 on CPU).

    NAME_OR_PATH is a hub name, a local folder, a GGUF file (loaded by transformers with
    ``gguf_file=``), or a known model name (``hf:smollm2-135m-instruct``: its pulled file,
    pulled on first use; see ``promptkit models``)."""
    if options:
        raise ConfigurationError(f"unknown option(s) for hf: {', '.join(sorted(options))}")
    if not arg:
        raise ConfigurationError("hf needs a model: hf:gpt2 or hf:/path/to/folder")
    from ..models._registry import lookup, pull

    label = f"hf:{arg}"
    known = lookup(arg) if not Path(os.path.expanduser(arg)).exists() else None
    if known is not None:  # a registry name: its verified file, pulled on first use
        arg, label = str(pull(known.name)), f"hf:{known.name}"
    loaded = _load_cached(arg, device, dtype)
    return HFBackend(loaded.model, loaded.tokenizer, name=label, folder=loaded.folder)
