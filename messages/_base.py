"""The base of every message: a frozen pydantic model with camelCase aliases."""

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class Message(BaseModel):
    """An immutable value exchanged between actors (or read from the backend).

    Fields are snake_case in Python and camelCase on the wire (`model_dump(by_alias=True)`);
    both spellings are accepted on input.
    """

    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True)
