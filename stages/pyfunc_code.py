"""The code file of the initializer's MLflow Model (MLflow's *models from code*).

``save_pyfunc_model`` logs this file as the model's ``python_model``: loading the model runs it,
and it names the :class:`~mamlctl.stages.pyfunc_model.InitializerForecaster` to serve. Nothing
is pickled, so loading a registered model never unpickles a file.
"""

from mlflow.models import set_model

from mamlctl.stages.pyfunc_model import InitializerForecaster

set_model(InitializerForecaster())
