"""The editable wheel: ship the .pth hook, not a copy of dataset_conversion/.

Hatchling puts a wheel's force-included files into the editable wheel too (a copy, which would go
stale). ``force_include_editable`` (documented build data of hatchling's wheel builder) replaces that
set for editable installs: the .pth only; the checkout's ``nnunet_missingmod/dataset_conversion``
reaches the top-level folder itself.
"""

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class EditableHook(BuildHookInterface):
    def initialize(self, version, build_data):
        if version == "editable":
            build_data["force_include_editable"] = {"nnunet_missingmod.pth": "nnunet_missingmod.pth"}
