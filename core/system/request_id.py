import contextvars
import re
import uuid

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def current_request_id() -> str:
    return _request_id.get()


def set_request_id(candidate: str | None) -> contextvars.Token[str]:
    """Use the caller's id when it is sane, else a fresh one."""
    value = candidate if candidate and _VALID.match(candidate) else uuid.uuid4().hex
    return _request_id.set(value)


def reset_request_id(token: contextvars.Token[str]) -> None:
    _request_id.reset(token)
