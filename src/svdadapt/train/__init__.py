"""Training: task table, datasets, the Trainer subclass, and the ``svdadapt train`` job."""

from .job import TrainOptions, train
from .tasks import CLASSIFICATION_TASKS, ClassificationTask, classification_task

__all__ = ["CLASSIFICATION_TASKS", "ClassificationTask", "TrainOptions", "classification_task", "train"]
