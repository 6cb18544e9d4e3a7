"""Every error Conclave raises or reports, in one hierarchy.

    ConclaveError
    ├── ConfigError                 bad configuration or input; fix it and run again
    │   └── UnknownExpertError      a request names an expert the pool does not have
    └── PoolError                   something went wrong running an expert
        ├── ModelLoadError          the model could not be loaded (bad path, out of memory)
        ├── EngineDeadError         the engine died mid-batch            [retryable]
        ├── ExpertUnavailableError  its engine is restarting; ask another [retryable]
        ├── GenerationError         the engine rejected or failed a request
        │   └── RequestRejectedError    the engine refused it before running it (too long)
        ├── NoAnswerError           every expert chosen for a question failed
        └── RemoteError             a remote (litellm) endpoint failed
            ├── RemoteTimeoutError      no answer within the timeout     [retryable, unreachable]
            ├── RateLimitedError        the provider asked us to slow down [retryable]
            ├── RemoteUnavailableError  connection refused, 5xx           [retryable, unreachable]
            └── RemoteRequestError      4xx: bad request, auth, unknown model

`retryable` on the class says whether trying the same request again can succeed;
`unreachable`, that the expert itself did not answer (the pool holds an expert down after
`pool.down_after` such failures in a row, `workers/backoff.py`). The pool
never lets these escape a batch: a failed item comes back as a result whose `error`
(an `ErrorInfo`) names the expert, the error class and the cause.
"""

from __future__ import annotations


class ConclaveError(Exception):
    """Base class. `retryable` says whether the same request may succeed on a retry;
    `unreachable`, that the expert's endpoint did not answer at all."""

    retryable: bool = False
    unreachable: bool = False

    def __init__(self, message: str, *, expert: str | None = None) -> None:
        super().__init__(message)
        self.expert = expert

    def __str__(self) -> str:
        base = super().__str__()
        return f"[{self.expert}] {base}" if self.expert else base


class ConfigError(ConclaveError):
    """Configuration or input is invalid; the message names the field, value and what is allowed."""


class UnknownExpertError(ConfigError):
    """A request names an expert that the pool's configuration does not define."""


class PoolError(ConclaveError):
    """Running an expert failed."""


class ModelLoadError(PoolError):
    """The model could not be loaded: bad path, unsupported architecture, out of memory."""


class EngineDeadError(PoolError):
    """The engine process died; restarting it and retrying the unfinished items may succeed."""

    retryable = True


class ExpertUnavailableError(PoolError):
    """The expert's engine died and is restarting in the background: the request was not
    run. A router asks the next best expert (`routing.on_expert_down`); a retry later can
    succeed."""

    retryable = True


class GenerationError(PoolError):
    """The engine rejected or failed a request (for instance a prompt longer than the context)."""


class RequestRejectedError(GenerationError):
    """The engine refused this request before running it (a prompt longer than the model's
    context, say); its other requests went on. Fix the request: retrying cannot help."""


class RemoteError(PoolError):
    """A remote endpoint reached through litellm failed."""


class RemoteTimeoutError(RemoteError):
    retryable = True
    unreachable = True


class RateLimitedError(RemoteError):
    retryable = True


class RemoteUnavailableError(RemoteError):
    retryable = True
    unreachable = True


class RemoteRequestError(RemoteError):
    """The provider refused the request (4xx): fix the request, model name or credentials."""


def error_class(name: str) -> type[ConclaveError]:
    """Look an error class up by name (results carry the name, not the object)."""
    cls = globals().get(name)
    if isinstance(cls, type) and issubclass(cls, ConclaveError):
        return cls
    return ConclaveError


class NoAnswerError(PoolError):
    """Every expert the router chose for a question failed, so there is nothing to vote
    on; the message gives each one's reason. (When they all refused the question, too long
    for their context, the error is a `RequestRejectedError` instead: the asker's to fix.)"""
