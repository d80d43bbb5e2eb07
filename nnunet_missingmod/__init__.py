"""nnU-Net v2 trainers, prediction and evaluation for MRI with missing modalities.

Kept import-free on purpose: the interpreter-start hook (trainer_registration) imports this
package in every Python process of the environment.
"""

__version__ = "0.1.0"
