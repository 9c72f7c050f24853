"""The model code of the served package (MLflow "models from code"): MLflow executes this file
when it loads the model, so no pickled Python object is ever stored or loaded. The weights and
settings come from the package's artifacts (see siamese.registry.pyfunc)."""

import mlflow

from siamese.registry.pyfunc import SiameseModel

mlflow.models.set_model(SiameseModel())
