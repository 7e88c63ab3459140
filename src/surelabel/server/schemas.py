"""Request bodies of the HTTP API (pydantic models: FastAPI validates and documents them)."""

# No ``from __future__ import annotations``: pydantic and FastAPI read them at runtime.

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TEXT_CHARS = 20_000


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
