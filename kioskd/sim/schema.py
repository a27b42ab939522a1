"""What the simulator accepts from a client, and the service's error texts for what it does not.

The GA client events (realtime-protocol.md §3.3, §3.7) are declared as strict pydantic models that forbid
unknown fields, so every rejection comes from one place and reads like the service's own messages (§5.7):
``Unknown parameter: 'session.temperature'.``, ``Missing required parameter: 'session.type'.``,
``Invalid value: 'nova'. Supported values are: ...``, ``Invalid type for '...': expected ..., but got ...``.
``ClientError`` carries such a message with its ``code`` and ``param``; the core turns it into an ``error`` event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
Voice = Literal["alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"]
MAX_OUTPUT_TOKENS = 4096


class ClientError(Exception):
    """A client event the service would refuse: becomes ``{"type": "error", "error": {...}}``.

    ``echo_event_id`` False leaves ``error.event_id`` null, as the service does for some errors (§3.1).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        error_type: str = "invalid_request_error",
        echo_event_id: bool = True,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type
        self.echo_event_id = echo_event_id


def unknown_parameter(path: str) -> ClientError:
    return ClientError(f"Unknown parameter: '{path}'.", code="unknown_parameter", param=path)


def missing_parameter(path: str) -> ClientError:
    return ClientError(f"Missing required parameter: '{path}'.", code="missing_required_parameter", param=path)


def invalid_value(path: str, value: Any, supported: str | None = None) -> ClientError:
    text = f"Invalid value: {_show(value)}."
    if supported:
        text += f" Supported values are: {supported}."
    return ClientError(text, code="invalid_value", param=path)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# --- session ---------------------------------------------------------------------------------------------


class PcmFormat(_Strict):
    type: Literal["audio/pcm"]
    rate: Literal[24000] = 24000


class PcmuFormat(_Strict):
    type: Literal["audio/pcmu"]


class PcmaFormat(_Strict):
    type: Literal["audio/pcma"]


AudioFormat = Annotated[PcmFormat | PcmuFormat | PcmaFormat, Field(discriminator="type")]


class ServerVad(_Strict):
    type: Literal["server_vad"]
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(300, ge=0)
    silence_duration_ms: int = Field(200, ge=0)
    idle_timeout_ms: int | None = Field(None, ge=0)
    create_response: bool = True
    interrupt_response: bool = True


class SemanticVad(_Strict):
    type: Literal["semantic_vad"]
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    create_response: bool = True
    interrupt_response: bool = True


TurnDetection = Annotated[ServerVad | SemanticVad, Field(discriminator="type")]


class NoiseReduction(_Strict):
    type: Literal["near_field", "far_field"]
    strength: float | None = Field(None, ge=0.0, le=1.0)


class Transcription(_Strict):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    delay: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None
    keywords: list[str] | None = None
    languages: list[str] | None = None


class AudioInput(_Strict):
    format: AudioFormat | None = None
    noise_reduction: NoiseReduction | None = None
    transcription: Transcription | None = None
    turn_detection: TurnDetection | None = None


class AudioOutput(_Strict):
    format: AudioFormat | None = None
    voice: Voice | None = None
    speed: float | None = Field(None, ge=0.25, le=1.5)


class AudioConfig(_Strict):
    input: AudioInput | None = None
    output: AudioOutput | None = None


class FunctionTool(_Strict):
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class McpTool(BaseModel):
    """MCP tools are accepted and echoed; the simulator never calls them."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["mcp"]
    server_label: str


Tool = Annotated[FunctionTool | McpTool, Field(discriminator="type")]


class SessionParams(_Strict):
    type: Literal["realtime", "transcription"]
    model: str | None = None
    instructions: str | None = None
    output_modalities: list[Literal["audio", "text"]] | None = None
    audio: AudioConfig | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: int | str | None = None
    truncation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None
    tracing: str | dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


# --- conversation items ----------------------------------------------------------------------------------


class InputTextPart(_Strict):
    type: Literal["input_text"]
    text: str


class InputAudioPart(_Strict):
    type: Literal["input_audio"]
    audio: str | None = None
    transcript: str | None = None


class InputImagePart(_Strict):
    type: Literal["input_image"]
    image_url: str | None = None
    detail: Literal["auto", "low", "high"] | None = None


class OutputTextPart(_Strict):
    type: Literal["output_text"]
    text: str | None = None


class OutputAudioPart(_Strict):
    type: Literal["output_audio"]
    audio: str | None = None
    transcript: str | None = None


ContentPart = Annotated[
    InputTextPart | InputAudioPart | InputImagePart | OutputTextPart | OutputAudioPart, Field(discriminator="type")
]
ItemStatus = Literal["completed", "incomplete", "in_progress"]


class MessageItem(_Strict):
    type: Literal["message"]
    role: Literal["user", "assistant", "system"]
    content: list[ContentPart]
    id: str | None = None
    status: ItemStatus | None = None
    object: Literal["realtime.item"] | None = None


class FunctionCallItem(_Strict):
    type: Literal["function_call"]
    name: str
    arguments: str
    call_id: str | None = None
    id: str | None = None
    status: ItemStatus | None = None
    object: Literal["realtime.item"] | None = None


class FunctionCallOutputItem(_Strict):
    type: Literal["function_call_output"]
    call_id: str
    output: str
    id: str | None = None
    status: ItemStatus | None = None
    object: Literal["realtime.item"] | None = None


class ItemReference(_Strict):
    type: Literal["item_reference"]
    id: str


Item = Annotated[MessageItem | FunctionCallItem | FunctionCallOutputItem, Field(discriminator="type")]
InputEntry = Annotated[
    MessageItem | FunctionCallItem | FunctionCallOutputItem | ItemReference, Field(discriminator="type")
]

_ALLOWED_PARTS = {
    "user": ("input_text", "input_audio", "input_image"),
    "system": ("input_text",),
    "assistant": ("output_text",),
}


def check_item_roles(item: Any, path: str) -> None:
    """Content types a role may carry; assistant audio cannot be created (the service wants ``text``)."""
    if not isinstance(item, MessageItem):
        return
    allowed = _ALLOWED_PARTS[item.role]
    for index, part in enumerate(item.content):
        where = f"{path}.content[{index}]"
        if item.role == "assistant" and part.type == "output_audio":
            raise missing_parameter(f"{where}.text")
        if part.type not in allowed:
            raise invalid_value(f"{where}.type", part.type, ", ".join(f"'{a}'" for a in allowed))
        if isinstance(part, OutputTextPart) and part.text is None:
            raise missing_parameter(f"{where}.text")


# --- responses -------------------------------------------------------------------------------------------


class ResponseAudioOutput(_Strict):
    format: AudioFormat | None = None
    voice: Voice | None = None


class ResponseAudio(_Strict):
    output: ResponseAudioOutput | None = None


class ResponseParams(_Strict):
    output_modalities: list[Literal["audio", "text"]] | None = None
    instructions: str | None = None
    audio: ResponseAudio | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: int | str | None = None
    conversation: str | None = None
    metadata: dict[str, str] | None = None
    input: list[InputEntry] | None = None
    prompt: dict[str, Any] | None = None


# --- client events ---------------------------------------------------------------------------------------


class _ClientEvent(_Strict):
    event_id: str | None = None


class SessionUpdate(_ClientEvent):
    type: Literal["session.update"]
    session: SessionParams


class AudioAppend(_ClientEvent):
    type: Literal["input_audio_buffer.append"]
    audio: str


class AudioCommit(_ClientEvent):
    type: Literal["input_audio_buffer.commit"]


class AudioClear(_ClientEvent):
    type: Literal["input_audio_buffer.clear"]


class ItemCreate(_ClientEvent):
    type: Literal["conversation.item.create"]
    item: Item
    previous_item_id: str | None = None


class ItemTruncate(_ClientEvent):
    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: int = Field(ge=0)
    audio_end_ms: int = Field(ge=0)


class ItemDelete(_ClientEvent):
    type: Literal["conversation.item.delete"]
    item_id: str


class ItemRetrieve(_ClientEvent):
    type: Literal["conversation.item.retrieve"]
    item_id: str


class ResponseCreate(_ClientEvent):
    type: Literal["response.create"]
    response: ResponseParams | None = None


class ResponseCancel(_ClientEvent):
    type: Literal["response.cancel"]
    response_id: str | None = None


ClientEvent = Annotated[
    SessionUpdate
    | AudioAppend
    | AudioCommit
    | AudioClear
    | ItemCreate
    | ItemTruncate
    | ItemDelete
    | ItemRetrieve
    | ResponseCreate
    | ResponseCancel,
    Field(discriminator="type"),
]
_CLIENT_EVENT: TypeAdapter[Any] = TypeAdapter(ClientEvent)


def parse_client_event(data: dict[str, Any]) -> Any:
    """The typed event, or ``ClientError`` with the service's wording for the first problem found."""
    try:
        return _CLIENT_EVENT.validate_python(data)
    except ValidationError as exc:
        raise error_from_validation(exc, data) from None


# --- pydantic error → service error ----------------------------------------------------------------------

_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a decimal",
    "bool_type": "a boolean",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def _wire_path(loc: tuple[int | str, ...], data: Any, prefix: str) -> str:
    """``session.audio.input.turn_detection.threshold`` from a pydantic location.

    pydantic puts union tags (``server_vad``, ``str``...) into locations; only the parts that name a key or an
    index of the input are kept, which drops exactly those.
    """
    path = prefix
    node = data
    for part in loc:
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            path += f"[{part}]"
            node = node[part]
        elif isinstance(part, str) and isinstance(node, dict) and part in node:
            path = f"{path}.{part}" if path else part
            node = node[part]
    return path


def error_from_validation(exc: ValidationError, data: Any, prefix: str = "") -> ClientError:
    err = exc.errors(include_url=False)[0]
    kind = err["type"]
    loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        path = _wire_path(loc, data, prefix)
        type_path = f"{path}.type" if path else "type"
        if kind == "union_tag_not_found":
            return missing_parameter(type_path)
        tag = ctx.get("tag")
        if not path:  # the event type itself, worded as the service does
            return invalid_value("type", tag)
        return invalid_value(type_path, tag, str(ctx.get("expected_tags", "")))
    # Missing fields are not in the input, so their name is the last location element.
    if kind == "missing":
        parent = _wire_path(loc[:-1], data, prefix)
        name = str(loc[-1])
        return missing_parameter(f"{parent}.{name}" if parent else name)
    path = _wire_path(loc, data, prefix)
    if kind == "extra_forbidden":
        return unknown_parameter(path)
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace(" or ", ", ")
        return invalid_value(path, value, expected)
    if kind in _EXPECTED:
        return ClientError(
            f"Invalid type for '{path}': expected {_EXPECTED[kind]}, but got {json_kind(value)} instead.",
            code="invalid_type",
            param=path,
        )
    number = "integer" if isinstance(value, int) and not isinstance(value, bool) else "decimal"
    if kind in ("less_than_equal", "less_than"):
        limit = ctx.get("le", ctx.get("lt"))
        return ClientError(
            f"Invalid '{path}': {number} above maximum value. Expected a value <= {limit}, but got {_show(value)} "
            "instead.",
            code=f"{number}_above_max_value",
            param=path,
        )
    if kind in ("greater_than_equal", "greater_than"):
        limit = ctx.get("ge", ctx.get("gt"))
        return ClientError(
            f"Invalid '{path}': {number} below minimum value. Expected a value >= {limit}, but got {_show(value)} "
            "instead.",
            code=f"{number}_below_min_value",
            param=path,
        )
    return ClientError(f"Invalid '{path}': {err['msg']}.", code="invalid_value", param=path)


def check_max_output_tokens(value: int | str, path: str) -> None:
    if isinstance(value, str):
        if value != "inf":
            raise invalid_value(path, value, "'inf' or an integer from 1 to 4096")
        return
    if value > MAX_OUTPUT_TOKENS:
        raise ClientError(
            f"Invalid '{path}': integer above maximum value. Expected a value <= {MAX_OUTPUT_TOKENS}, "
            f"but got {value} instead.",
            code="integer_above_max_value",
            param=path,
        )
    if value < 1:
        raise ClientError(
            f"Invalid '{path}': integer below minimum value. Expected a value >= 1, but got {value} instead.",
            code="integer_below_min_value",
            param=path,
        )


def check_tool_choice(value: str | dict[str, Any], path: str) -> None:
    if isinstance(value, str):
        if value not in ("auto", "none", "required"):
            raise invalid_value(path, value, "'auto', 'none', 'required'")
        return
    kind = value.get("type")
    if kind not in ("function", "mcp"):
        raise invalid_value(f"{path}.type", kind, "'function', 'mcp'")
    if kind == "function" and not isinstance(value.get("name"), str):
        raise missing_parameter(f"{path}.name")


def check_truncation(value: str | dict[str, Any], path: str) -> None:
    if isinstance(value, str):
        if value not in ("auto", "disabled"):
            raise invalid_value(path, value, "'auto', 'disabled'")
        return
    if value.get("type") != "retention_ratio":
        raise invalid_value(f"{path}.type", value.get("type"), "'retention_ratio'")
    ratio = value.get("retention_ratio")
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 <= ratio <= 1.0:
        raise ClientError(
            f"Invalid '{path}.retention_ratio': expected a number from 0.0 to 1.0.",
            code="invalid_value",
            param=f"{path}.retention_ratio",
        )
    for key in value:
        if key not in ("type", "retention_ratio", "token_limits"):
            raise unknown_parameter(f"{path}.{key}")


def check_modalities(value: Sequence[str], path: str) -> None:
    if len(value) != 1:
        raise ClientError(
            f"Invalid '{path}': give exactly one of ['audio'] or ['text'].", code="invalid_value", param=path
        )


def check_tracing(value: str | dict[str, Any], path: str) -> None:
    if isinstance(value, str) and value != "auto":
        raise invalid_value(path, value, "'auto'")
