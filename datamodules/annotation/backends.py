"""Where the completions come from: an OpenAI-compatible endpoint or a local transformers model.

Both expose ``async complete(batch_of_messages) -> list[str]``; transport problems raise
:class:`TransportError`, which the runner retries with exponential backoff. The API key is read
from ``CTVLP_LLM_API_KEY`` (else ``OPENAI_API_KEY``) and is only ever put in a request header.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp

API_KEY_VARIABLES = ("CTVLP_LLM_API_KEY", "OPENAI_API_KEY")


class TransportError(RuntimeError):
    """A request that failed before a reply could be validated (HTTP error, timeout, bad envelope)."""


def _api_key() -> str | None:
    for name in API_KEY_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    return None


class OpenAIBackend:
    """``POST {url}/chat/completions`` with greedy decoding and a JSON response format.

    ``url`` is the API base (``http://host:8000/v1``); a full ``.../chat/completions`` URL works too.
    """

    batch_size = 1

    def __init__(self, url: str, model: str | None, timeout_s: float = 120.0, max_tokens: int = 2048):
        url = url.rstrip("/")
        self.endpoint = url if url.endswith("/chat/completions") else f"{url}/chat/completions"
        self.model = model or "default"
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_tokens = max_tokens
        # JSON mode (``response_format``) is asked for until the server rejects it with HTTP 400.
        self.json_mode = True
        self._session: aiohttp.ClientSession | None = None

    def describe(self) -> str:
        return f"{self.model} at {self.endpoint}"

    async def __aenter__(self) -> OpenAIBackend:
        headers = {"Content-Type": "application/json"}
        key = _api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=self.timeout, connector=aiohttp.TCPConnector(limit=0)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def complete(self, batch: list[list[dict[str, str]]]) -> list[str]:
        return [await self._one(messages) for messages in batch]

    async def _one(self, messages: list[dict[str, str]]) -> str:
        assert self._session is not None, "use the backend as an async context manager"
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        try:
            async with self._session.post(self.endpoint, json=body) as response:
                if response.status != 200:
                    text = (await response.text())[:200]
                    if response.status == 400 and self.json_mode and "response_format" in text:
                        self.json_mode = False  # a server without JSON mode: the prompt asks for JSON
                    raise TransportError(f"HTTP {response.status}: {text}")
                payload = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as error:
            raise TransportError(f"{type(error).__name__}: {error}") from None
        try:
            return str(payload["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise TransportError(
                f"no choices[0].message.content in the reply: {str(payload)[:200]}"
            ) from None


class TransformersBackend:
    """A local causal LM directory: batched greedy generation on the best available device.

    The tokenizer's chat template formats the messages when it has one, else a plain
    ``System: ... User: ... Assistant:`` prompt.
    """

    def __init__(self, directory: Path, batch_size: int = 8, max_new_tokens: int = 512):
        self.directory = Path(directory)
        self.batch_size = max(1, batch_size)
        self.max_new_tokens = max_new_tokens
        self.model = self.directory.name
        self._loaded = None

    def describe(self) -> str:
        return f"local transformers model {self.directory}"

    async def __aenter__(self) -> TransformersBackend:
        await asyncio.to_thread(self._load)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._loaded = None

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = "cuda" if torch.cuda.is_available() else "cpu"
        tokenizer = AutoTokenizer.from_pretrained(self.directory)
        tokenizer.padding_side = "left"  # greedy generation continues the right end of each row
        tokenizer.truncation_side = "left"  # an over-long prompt keeps its end: the report
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token or tokenizer.sep_token
        model = AutoModelForCausalLM.from_pretrained(self.directory).to(device).eval()
        self._loaded = (tokenizer, model, device)

    def _prompt(self, tokenizer, messages: list[dict[str, str]]) -> str:
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n\n".join([*lines, "Assistant:"])

    def _generate(self, batch: list[list[dict[str, str]]]) -> list[str]:
        import torch

        tokenizer, model, device = self._loaded
        prompts = [self._prompt(tokenizer, m) for m in batch]
        limit = getattr(model.config, "max_position_embeddings", None) or getattr(
            model.config, "n_positions", 4096
        )
        max_input = max(1, limit - self.max_new_tokens)
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True, max_length=max_input)
        encoded = {k: v.to(device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            output = model.generate(
                **encoded,
                max_new_tokens=min(self.max_new_tokens, limit - encoded["input_ids"].shape[1]),
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = output[:, encoded["input_ids"].shape[1] :]
        return tokenizer.batch_decode(new, skip_special_tokens=True)

    async def complete(self, batch: list[list[dict[str, str]]]) -> list[str]:
        try:
            return await asyncio.to_thread(self._generate, batch)
        except (RuntimeError, ValueError) as error:
            raise TransportError(f"generation failed: {type(error).__name__}: {error}") from None


def open_backend(
    llm: str, model: str | None, concurrency: int, timeout_s: float, max_tokens: int = 2048
) -> OpenAIBackend | TransformersBackend:
    """``llm`` is an http(s) URL (OpenAI-compatible) or a local model directory."""
    if llm.startswith(("http://", "https://")):
        return OpenAIBackend(llm, model, timeout_s, max_tokens)
    directory = Path(llm).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"--llm {llm}: neither an http(s) URL nor a model directory")
    return TransformersBackend(directory, batch_size=concurrency, max_new_tokens=max_tokens)
