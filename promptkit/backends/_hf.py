"""The Hugging Face backend: any transformers causal LM of the GPT-2 family (``hf:NAME_OR_PATH``).

Generation goes through transformers' own ``generate`` (a prompt and seed give the text
transformers gives), batched with left padding and streamed through its
``TextIteratorStreamer``; sampling draws from a ``torch.Generator`` of the call's own, so a seed
gives the same text whatever else the process does, and no global generator is touched. Scoring
shares :class:`~promptkit.backends._local.LocalScoring` with the scratch backend, so both score
the same weights identically. Loading (a local folder, a GGUF file, the hub cache or the hub)
and the cache of loaded models live in :mod:`promptkit.backends._hf_loading`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteriaList,
)

from .._llg import llg_tokenizer
from ..errors import BackendError, ConfigurationError
from ._base import Completion, GenerationConfig, Message, Usage, cut_at_stop
from ._chat_templates import ChatTemplate
from ._hf_adapter import is_hf_adapter_folder, merged_adapter, read_hf_adapter
from ._hf_generation import Abandoned, GrammarLogitsProcessor, SamplingProcessor, eager_streamer
from ._hf_loading import check_dtype, load_cached
from ._local import LOCAL_CAPABILITIES, LocalScoring, folder_fingerprint, safe_prefix
from ._masking import TokenMasker
from ._options import check_device, check_known, flag, text

__all__ = ["GrammarLogitsProcessor", "HFBackend", "from_spec"]


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
        self.chat_template = None

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
            "chat_template": None if self.chat_template is None else self.chat_template.source,
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
            processors.append(SamplingProcessor(config, generators, grammar.masker, grammar.done))
        elif generators is not None:
            processors.append(SamplingProcessor(config, generators))
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        return kwargs

    def _inputs(self, prompts: Sequence[str], config: GenerationConfig) -> dict[str, Any]:
        """Token ids and attention mask of text prompts (see :meth:`_id_inputs`)."""
        for prompt in prompts:
            self._check_text(prompt)
        return self._id_inputs([self.tokenizer.encode(prompt) for prompt in prompts], config)

    def _id_inputs(self, encoded: list[list[int]], config: GenerationConfig) -> dict[str, Any]:
        """Token ids and attention mask of prompts given as ids, left-padded with end-of-text
        (done here, so the shared tokenizer's padding settings are never changed)."""
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

    def _chat_ids(
        self, messages: list[Message], config: GenerationConfig | None = None
    ) -> list[int]:
        """The prompt ids of ``messages``: the chat template's text, assistant turn opened, with
        its special tokens recognised (message contents were rendered into it as text), and
        the config's tools in its tools slot."""
        text = self._chat_text(messages, config)
        return list(self.tokenizer.hf(text, add_special_tokens=False)["input_ids"])

    def _chat(self, messages: list[Message], config: GenerationConfig) -> Completion:
        """Generate the assistant's answer to ``messages`` (ends at the end-of-turn token)."""
        (completion,) = self._generate(
            self._id_inputs([self._chat_ids(messages, config)], config), config
        )
        return completion

    def _stream_chat(
        self, messages: list[Message], config: GenerationConfig
    ) -> Generator[str, None, Completion]:
        """Stream the assistant's answer to ``messages`` (see :meth:`_stream_complete`)."""
        return self._stream_inputs(
            self._id_inputs([self._chat_ids(messages, config)], config), config
        )

    def generate_batch(
        self, prompts: Sequence[str], config: GenerationConfig | None = None
    ) -> list[Completion]:
        """Generate for several prompts at once (left padding, one ``generate`` call; one at a
        time for a request with tools, whose answers are parsed into calls)."""
        config = config or GenerationConfig()
        if config.tools:
            return [self.generate(prompt, config) for prompt in prompts]
        return self._generate(self._inputs(prompts, config), config)

    def _generate(self, inputs: dict[str, Any], config: GenerationConfig) -> list[Completion]:
        """One ``generate`` call on prepared inputs: each row's Completion."""
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
        return self._stream_inputs(self._inputs([text], config), config)

    def _stream_inputs(
        self, inputs: dict[str, Any], config: GenerationConfig
    ) -> Generator[str, None, Completion]:
        """Stream the text generated after one prepared prompt."""
        streamer = eager_streamer(self.tokenizer.hf)
        abandoned = threading.Event()  # the reader closed the stream: stop generating
        kwargs = {
            **self._call_kwargs(inputs, config),
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([Abandoned(abandoned)]),
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


def from_spec(
    arg: str,
    *,
    device: str | None = None,
    dtype: str | None = None,
    chat_template: bool = True,
    **options: Any,
) -> HFBackend:
    """``hf:NAME_OR_PATH`` with optional ``device=`` and ``dtype=`` (default float32 on CPU).

    NAME_OR_PATH is a hub name, a local folder, a GGUF file (loaded by transformers with
    ``gguf_file=``), or a known model name (``hf:smollm2-135m-instruct``: its pulled file,
    pulled on first use; see ``promptkit models``). A model whose tokenizer has a chat template
    (an instruction-tuned one) gets chat messages rendered with it, in promptkit's sandbox;
    ``chat_template=False`` flattens them into text as for a model without one."""
    check_known("hf", options, ("device", "dtype", "chat_template"))
    device, dtype = text("hf", "device", device), text("hf", "dtype", dtype)
    check_device("hf", device)
    check_dtype(dtype)
    chat_template = flag("hf", "chat_template", chat_template)
    if not arg:
        raise ConfigurationError("hf needs a model: hf:gpt2 or hf:/path/to/folder")
    from ..models._registry import lookup, pull

    label = f"hf:{arg}"
    if is_hf_adapter_folder(Path(os.path.expanduser(arg))):
        return _with_adapter(Path(os.path.expanduser(arg)), device, dtype)
    known = lookup(arg) if not Path(os.path.expanduser(arg)).exists() else None
    if known is not None:  # a registry name: its verified file, pulled on first use
        arg, label = str(pull(known.name)), f"hf:{known.name}"
    loaded = load_cached(arg, device, dtype)
    backend = HFBackend(loaded.model, loaded.tokenizer, name=label, folder=loaded.folder)
    if chat_template:
        backend.use_chat_template(_tokenizer_chat_template(loaded.tokenizer, label))
    return backend


def _tokenizer_chat_template(hf_tokenizer: Any, name: str) -> ChatTemplate | None:
    """The chat template a transformers tokenizer carries (from tokenizer_config.json,
    chat_template.jinja or a GGUF file's metadata), to render in promptkit's sandbox rather
    than with ``apply_chat_template``; None when it has none. Raises TemplateError for a
    template that does not compile."""
    source = hf_tokenizer.chat_template
    if isinstance(source, dict):  # several named templates: the default one
        source = source.get("default")
    if not isinstance(source, str) or not source.strip():
        return None
    return ChatTemplate(
        source,
        bos_token=hf_tokenizer.bos_token or "",
        eos_token=hf_tokenizer.eos_token or "",
        name=f"{name} (chat template)",
    )


def _with_adapter(folder: Path, device: str | None, dtype: str | None) -> HFBackend:
    """``hf:DIR`` for a LoRA adapter folder: its base (by the spec it records), checked against
    the recorded sha256, with the adapter merged into a copy. The backend's folder is the
    adapter's, so its cache identity is the adapter's files, not the base's."""
    record = read_hf_adapter(folder)
    base = from_spec(record["base"]["spec"].partition(":")[2], device=device, dtype=dtype)
    model = merged_adapter(folder, base.model, record["base"]["sha256"])
    backend = HFBackend(model, base.tokenizer.hf, name=f"hf:{folder}", folder=folder)
    backend.use_chat_template(base.chat_template)
    return backend
