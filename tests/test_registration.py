"""nnU-Net finds our trainers in a fresh shell, with or without a user's own nnUNet_extTrainer, after
an editable install (the suite's own environment) and after a wheel's (built and installed here)."""

import os
import sys
import sysconfig

import pytest

from conftest import REPO, clean_env, run

LOOKUP = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find\n"
          "import sys\n"
          "for name in sys.argv[1:]:\n"
          "    print('FOUND', name, find(name).__module__)\n")


def test_pth_hook_is_installed_at_site_packages_root():
    path = os.path.join(sysconfig.get_paths()["purelib"], "nnunet_missingmod.pth")
    assert os.path.isfile(path), (
        f"{path} was not installed: pyproject.toml force-includes it at the wheel's root, and hatch_build.py "
        "in the editable wheel. See docs/installation.md.")
    with open(path) as f:
        assert "register()" in f.read()


def test_editable_install_reaches_the_checkouts_converters():
    """dataset_conversion/ sits at the repository's top (SPEC section 5): an editable install imports
    it from there, live, as nnunet_missingmod.dataset_conversion."""
    result = run(["python", "-c", "import nnunet_missingmod.dataset_conversion.brats as m; print(m.__file__)"],
                 clean_env({}))
    assert result.stdout.strip() == os.path.join(REPO, "dataset_conversion", "brats.py")


def test_trainer_lookup_needs_no_configuration(tmp_path):
    result = run(["python", "-c", LOOKUP, "ModalityDropoutTrainer"], clean_env({}))
    assert "FOUND ModalityDropoutTrainer nnunet_missingmod.training.modality_dropout" in result.stdout


def test_users_own_trainer_folder_keeps_working(tmp_path):
    own = tmp_path / "my_trainers"
    own.mkdir()
    (own / "my_trainer.py").write_text(
        "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n"
        "class MyLabTrainer(nnUNetTrainer):\n    pass\n")
    env = clean_env({}, nnUNet_extTrainer=own)
    result = run(["python", "-c", LOOKUP + "import os; print('ENV', os.environ['nnUNet_extTrainer'])",
                  "MyLabTrainer", "ModalityDropoutTrainer"], env)
    assert "FOUND MyLabTrainer my_trainer" in result.stdout
    assert "FOUND ModalityDropoutTrainer nnunet_missingmod.training.modality_dropout" in result.stdout
    folders = result.stdout.split("ENV ")[1].strip().split(os.pathsep)
    assert folders[0] == str(own) and folders[1].endswith(os.path.join("nnunet_missingmod", "nnunet_ext"))


def test_trainer_path_command_prints_the_folder():
    result = run(["nnunet_missingmod_trainer_path"], clean_env({}))
    assert os.path.isfile(os.path.join(result.stdout.strip(), "nnunet_missingmod_trainers.py"))


# A site folder holding only the installed wheel (its .pth runs), then the environment's packages on
# the plain path (their .pth files do not run, so this environment's editable install cannot answer).
FROM_WHEEL = ("import importlib, site, sys\n"
              "site.addsitedir(sys.argv[1])\n"
              "sys.path.append(sys.argv[2])\n"
              "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find\n"
              "for name in sys.argv[3].split(','):\n"
              "    print('FILE', sys.modules[find(name).__module__].__file__)\n"
              "for module in sys.argv[4].split(','):\n"
              "    print('FILE', importlib.import_module(module).__file__)\n")


@pytest.mark.e2e
def test_wheel_install_finds_every_trainer_and_converter(tmp_path):
    """``pip install .``: the wheel carries the .pth at its root and the converters inside the package."""
    from nnunet_missingmod.training import __all__ as trainers

    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist",
         REPO], clean_env({}), cwd=tmp_path)
    site_folder = tmp_path / "site"
    run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site_folder,
         next((tmp_path / "dist").glob("nnunet_missingmod-*.whl"))], clean_env({}))
    assert (site_folder / "nnunet_missingmod.pth").is_file()
    entry_points = (next(site_folder.glob("nnunet_missingmod-*.dist-info")) / "entry_points.txt").read_text()
    modules = sorted({line.split("=")[1].split(":")[0].strip() for line in entry_points.splitlines() if "=" in line})
    result = run([sys.executable, "-I", "-S", "-c", FROM_WHEEL, site_folder, sysconfig.get_paths()["purelib"],
                  ",".join(trainers), ",".join(modules)], clean_env({}))
    files = [line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("FILE ")]
    assert len(files) == len(trainers) + len(modules) and all(f.startswith(str(site_folder)) for f in files), files
