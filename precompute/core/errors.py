"""Domain errors. Each message says what to change; the CLI and the server map them to exit
codes and HTTP statuses at their boundary (nothing here knows about either)."""


class LookupsError(Exception):
    """Base class of every error the project raises on purpose."""


class ModelNotAvailable(LookupsError):
    """A model name that is neither a local directory nor loadable (offline, not cached, unknown)."""


class DatasetNotAvailable(LookupsError):
    """A dataset name or file that cannot be loaded, or that holds no documents."""


class BadSettings(LookupsError):
    """A setting out of range for the model or data (e.g. a layer index past ``n_layers``)."""


class SettingsMismatch(LookupsError):
    """An existing run was made with other settings; nothing is overwritten."""


class SchemaTooNew(LookupsError):
    """The database was written by a newer version of context-lookups."""


class DatabaseUnavailable(LookupsError):
    """A database URL that cannot be opened: unreachable server, bad credentials, missing driver."""


class ClusterUnavailable(LookupsError):
    """A Ray address (``--ray``) that does not answer, or Ray not installed."""


class NotFound(LookupsError):
    """A run, neuron, head or pair that does not exist; the message names the valid range."""


class PromptTooLong(LookupsError):
    """A live prompt longer than the server's token cap."""


class BadDatabase(LookupsError):
    """A ``--db`` that is not a database URL, a file that is not SQLite, or a place the
    database cannot be opened or created; the message says which, and what to pass instead."""


class ModelNotSupported(ModelNotAvailable):
    """A model whose architecture no backend runs (or ``--backend fast`` for one without a fast
    backend); the message names the architecture and what to use instead."""


class BadLiveInput(LookupsError):
    """A request the explorer cannot run: an empty prompt, a malformed head list, a position
    outside the prompt, text that is not valid Unicode or too long."""
