"""The shapes of the server's answers, for its OpenAPI schema (GET /openapi.json) and its clients.

The server writes its JSON itself (server.py: no second walk of the answer); these models describe that
JSON, and the tests check real answers against them.
"""

from __future__ import annotations

import pydantic


class Ranked(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(populate_by_name=True)
    label: int = pydantic.Field(description="the class's index, 0-9")
    class_name: str = pydantic.Field(alias="class", description="the class's name, e.g. 'Ankle boot'")
    probability: float = pydantic.Field(ge=0, le=1)


class Prediction(pydantic.BaseModel):
    name: str = pydantic.Field(description="the upload's file name ('body' for a raw image body)")
    top: list[Ranked] = pydantic.Field(description="the three most probable classes, most probable first")
    preprocessed: str = pydantic.Field(description="the 28x28 view the model saw, as a PNG data URL")
    warning: str | None = pydantic.Field(None, description="present where the image is blank once preprocessed")


class Predictions(pydantic.BaseModel):
    predictions: list[Prediction] = pydantic.Field(description="one per image, in the order sent")


class Problem(pydantic.BaseModel):
    detail: str = pydantic.Field(description="what went wrong and what to change")


BINARY = {"schema": {"type": "string", "format": "binary"}}
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "description": "one image as the body (any image/* type, or application/octet-stream), or several as "
        "file fields of a multipart form",
        "content": {
            "image/*": BINARY,
            "application/octet-stream": BINARY,
            "multipart/form-data": {
                "schema": {"type": "object", "additionalProperties": {"type": "string", "format": "binary"}}
            },
        },
    }
}
REFUSALS: dict[int | str, dict] = {
    status: {"model": Problem, "description": description}
    for status, description in {
        400: "a damaged image, a form without files, or a client gone before its whole request",
        413: "a body or an image over the server's limits",
        415: "something that is not an image",
        503: "the work queue is full: try again after Retry-After seconds",
    }.items()
}
