"""Request bodies of the HTTP API (pydantic models: FastAPI validates and documents them).

Every string must be valid Unicode: pydantic refuses a lone surrogate (``"\\ud800"``,
legal in JSON) with 422 like any other malformed input, and the answer is written with
:class:`~surelabel.server.errors.SafeJSONResponse`, which escapes what it echoes.
"""

# No ``from __future__ import annotations``: pydantic and FastAPI read them at runtime.

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TEXT_CHARS = 20_000


def valid_unicode(value: Any, what: str) -> Any:
    """``value`` as it is; ValueError when a string in it holds a lone surrogate (pydantic
    refuses those in plain ``str`` fields, but not in every union)."""
    for s in value if isinstance(value, list) else [value]:
        if isinstance(s, str):
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{what} is not valid Unicode (a lone surrogate)") from None
    return value


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=MAX_TEXT_CHARS, description="the text to classify")
    id: str | int | None = Field(
        default=None,
        description="client id; a retried request with the same id returns the stored item",
    )

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text must not be empty or only whitespace")
        return v

    @field_validator("id")
    @classmethod
    def _id_length(cls, v: str | int | None) -> str | int | None:
        valid_unicode(v, "id")
        if v is not None and len(str(v)) > 200:
            raise ValueError("id must be at most 200 characters")
        return v


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ItemIn] = Field(min_length=1)


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str | list[str] | None = Field(
        default=None, description="the final label (a list for multilabel tasks)"
    )
    clarify: bool = Field(default=False, description="the item needs clarification")
    note: str | None = Field(default=None, max_length=5000)

    @field_validator("label", "note")
    @classmethod
    def _unicode(cls, v: Any) -> Any:
        return valid_unicode(v, "label or note")


class ClaimIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order: str = Field(default="confidence", pattern="^(confidence|oldest)$")
    adjudicate: bool = Field(default=False, description="disputed items first (adjudicators)")
