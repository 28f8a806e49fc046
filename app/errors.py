"""One exception family for user-facing failures.

Messages name the offending file, line, field or value and, where there is one, the next step.
The CLI and UI show `str(err)` as one line; tests still get the traceback.
"""


class BelleError(Exception):
    """A problem the user can fix (bad file, unknown id, bad setting). Never a bug."""


class ModelFileError(BelleError):
    """A model file is missing, truncated, not GGUF, or of an unsupported architecture."""


class CatalogError(BelleError):
    """An unknown catalog id, or a download that failed or did not verify."""


class StoreError(BelleError):
    """The conversation store cannot be opened or read."""


class SettingsError(BelleError):
    """A setting has an unknown name or a bad value."""


class ContextOverflowError(BelleError):
    """The conversation does not fit in the context window and the policy says refuse."""


class InputError(BelleError):
    """A data or text file the user gave is malformed (names file and line)."""


class RequestError(BelleError):
    """An API request to `belle serve` is malformed or asks for what the server cannot do. The
    message names the field; `status` and `code` become the HTTP status and the OpenAI-style error."""

    def __init__(self, message: str, status: int = 400, code: str | None = None, param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param
        self.kind = kind
