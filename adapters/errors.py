"""Why an adapter version is refused or cannot be found: the adapters domain's errors, rendered
by the one error handler (``service.api.errors``) in the same envelope as every other."""

from __future__ import annotations

from service.errors import GatewayError


class AdapterRejected(GatewayError):
    """Base of every reason an adapter registration is refused; nothing is stored or recorded.

    Messages name only what the caller gave (its path string, file names inside the adapter),
    never the server's own directories.
    """

    status = 422
    type = "invalid_request_error"
    code = "adapter_rejected"


class AdapterNameInvalid(AdapterRejected):
    status = 400
    code = "adapter_name_invalid"


class AdapterPoolUnknown(AdapterRejected):
    status = 400
    code = "adapter_pool_unknown"


class AdapterPoolNotConfigured(AdapterRejected):
    """The pool has no local copy of its base model to validate adapters against."""

    code = "adapter_pool_not_configured"


class AdapterPathNotLocal(AdapterRejected):
    """A URL or something else that cannot be a local directory path."""

    status = 400
    code = "adapter_path_not_local"


class AdapterPathTraversal(AdapterRejected):
    status = 400
    code = "adapter_path_traversal"


class AdapterPathOutsideRoot(AdapterRejected):
    status = 400
    code = "adapter_path_outside_root"


class AdapterSymlinkEscape(AdapterRejected):
    status = 400
    code = "adapter_symlink_escape"


class AdapterPathNotFound(AdapterRejected):
    """Not an existing local directory (hub ids end up here)."""

    status = 400
    code = "adapter_path_not_found"


class AdapterUnsupportedFile(AdapterRejected):
    """Something in the tree that is neither a regular file nor a directory (fifo, broken link)."""

    code = "adapter_unsupported_file"


class AdapterConfigMissing(AdapterRejected):
    code = "adapter_config_missing"


class AdapterConfigInvalid(AdapterRejected):
    code = "adapter_config_invalid"


class AdapterWeightsMissing(AdapterRejected):
    code = "adapter_weights_missing"


class AdapterPickleWeights(AdapterRejected):
    code = "adapter_pickle_weights"


class AdapterCorruptWeights(AdapterRejected):
    code = "adapter_corrupt_weights"


class AdapterTooLarge(AdapterRejected):
    code = "adapter_too_large"


class AdapterNotLora(AdapterRejected):
    code = "adapter_not_lora"


class AdapterRankTooHigh(AdapterRejected):
    code = "adapter_rank_too_high"


class AdapterBaseModelMismatch(AdapterRejected):
    code = "adapter_base_model_mismatch"


class AdapterUnknownTargetModules(AdapterRejected):
    code = "adapter_unknown_target_modules"


class AdapterChangesNothing(AdapterRejected):
    """Every LoRA update is zero (B or A all zeros, or lora_alpha 0): it serves the base model."""

    code = "adapter_changes_nothing"


class AdapterPoolConflict(AdapterRejected):
    """The same content is registered under this name already, for another pool."""

    status = 409
    code = "adapter_pool_conflict"


class AdapterNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "adapter_not_found"


class AdapterRegistrationConflict(GatewayError):
    """Another gateway replica kept taking the same version number; the caller may retry."""

    status = 409
    type = "invalid_request_error"
    code = "adapter_registration_conflict"


class AdapterInspectionFailed(GatewayError):
    """The peft worker crashed, timed out or is not installed: not the adapter's fault."""

    status = 503
    type = "server_error"
    code = "adapter_inspection_failed"
