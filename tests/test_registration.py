"""nnU-Net finds our trainers in a fresh shell, with or without a user's own nnUNet_extTrainer."""

import os
import sysconfig

from conftest import clean_env, run

LOOKUP = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find\n"
          "import sys\n"
          "for name in sys.argv[1:]:\n"
          "    print('FOUND', name, find(name).__module__)\n")


def test_pth_hook_is_installed_at_site_packages_root():
    path = os.path.join(sysconfig.get_paths()["purelib"], "nnunet_missingmod.pth")
    assert os.path.isfile(path), (
        f"{path} was not installed. An editable install ships it through setuptools' private "
        "editable_wheel._run_build_commands (setup.py, EditableWheelWithPth); a setuptools upgrade may have changed "
        "it. See docs/installation.md.")
    with open(path) as f:
        assert "register()" in f.read()


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
