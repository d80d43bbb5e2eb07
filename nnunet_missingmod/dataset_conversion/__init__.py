"""In a checkout (editable install, tests), ``nnunet_missingmod.dataset_conversion`` is the repository's
top-level dataset_conversion/ (SPEC section 5): this file points the subpackage's path there. Wheels
install that folder here instead, replacing this file (pyproject.toml, force-include)."""

import os

__path__ = [os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "dataset_conversion")]
