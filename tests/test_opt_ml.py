"""The /opt/ml contract's paths honour SAGEMAKER_BASE_DIR."""

from hilt.core.opt_ml import OptML


def test_fixture_tree_and_env(opt_ml, monkeypatch):
    assert OptML.from_env() == opt_ml
    for path in (opt_ml.input_config_dir, opt_ml.model_dir, opt_ml.output_data_dir, opt_ml.checkpoint_dir):
        assert path.is_dir()
    assert opt_ml.channel_dir("train") == opt_ml.base / "input" / "data" / "train"
    assert opt_ml.failure_file == opt_ml.base / "output" / "failure"


def test_default_base_is_opt_ml(monkeypatch):
    monkeypatch.delenv("SAGEMAKER_BASE_DIR", raising=False)
    assert str(OptML.from_env().model_dir) == "/opt/ml/model"
