"""The model code of the served package (MLflow "models from code"): MLflow executes this file
when it loads the model, so no pickled Python object is ever stored or loaded. The weights and
settings come from the package's artifacts (see siamese.serving)."""

import mlflow

from siamese.serving import SiameseModel

mlflow.models.set_model(SiameseModel())
